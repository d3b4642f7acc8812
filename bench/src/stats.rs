//! Summaries of repeated runs.

/// Median and range of repeated measurements.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    /// The middle value (the lower middle of an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// Summarises `values`; all zero when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_by(f64::total_cmp);
        Spread {
            median: values[(values.len() - 1) / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

/// The `p`-th percentile (0 to 100) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // The epsilon keeps 0.999 × 1000 (999.0000000000001) at rank 999.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A count with SI suffixes: 1.23 M, 456 k.
pub fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2} M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0} k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_percentiles() {
        let spread = Spread::of([3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((spread.median, spread.min, spread.max), (2.0, 1.0, 3.0));
        let sorted: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 500.0);
        assert_eq!(percentile(&sorted, 99.0), 990.0);
        assert_eq!(percentile(&sorted, 99.9), 999.0);
        assert_eq!(si(1_234_000.0), "1.23 M");
        assert_eq!(si(45_600.0), "46 k");
    }
}
