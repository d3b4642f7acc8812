//! A writer for the Prometheus text exposition format, version 0.0.4.
//!
//! The daemon renders every scrape from its counters into an [`Exposition`],
//! so there is no registry to keep in step with the state: families are
//! opened by name, samples added, and [`Exposition::finish`] writes each
//! family once (HELP, TYPE, then its samples together, as the format
//! requires) in the order the families were first opened.
//!
//! ```
//! use turnx::prometheus::Exposition;
//! let mut metrics = Exposition::new();
//! metrics
//!     .counter("turnx_packets_total", "Relayed packets.")
//!     .sample(&[("side", "client"), ("direction", "in")], 10u64)
//!     .sample(&[("side", "peer"), ("direction", "out")], 7u64);
//! metrics.gauge("turnx_ready", "Whether the relay serves.").sample(&[], true);
//! assert!(metrics.finish().contains("turnx_ready 1\n"));
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// The `Content-Type` of a text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One family's header and rendered samples.
#[derive(Debug)]
struct FamilyData {
    name: String,
    help: String,
    kind: Kind,
    samples: String,
    /// Rendered label sets already written: a repeat is invalid output.
    seen: HashSet<String>,
}

/// A text exposition being built: one scrape's worth of metric families.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<FamilyData>,
    by_name: HashMap<String, usize>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter family `name` (by convention ending in `_total`).
    pub fn counter(&mut self, name: &str, help: &str) -> Family<'_> {
        self.family(name, help, Kind::Counter)
    }

    /// The gauge family `name`.
    pub fn gauge(&mut self, name: &str, help: &str) -> Family<'_> {
        self.family(name, help, Kind::Gauge)
    }

    /// Opens a family, or reopens it to add samples (keeping its first help
    /// and type), so callers need not gather a family's samples in one place.
    fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        debug_assert!(valid_metric_name(name), "invalid metric name {name:?}");
        let index = match self.by_name.get(name) {
            Some(&index) => {
                debug_assert_eq!(
                    self.families[index].kind, kind,
                    "metric {name} reopened with another type"
                );
                index
            }
            None => {
                self.families.push(FamilyData {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: String::new(),
                    seen: HashSet::new(),
                });
                self.by_name
                    .insert(name.to_owned(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        Family {
            data: &mut self.families[index],
        }
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for family in &self.families {
            out.push_str("# HELP ");
            out.push_str(&family.name);
            out.push(' ');
            escape_help(&family.help, &mut out);
            out.push('\n');
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
            out.push_str(&family.samples);
        }
        out
    }
}

/// A family to add samples to; see [`Exposition::counter`].
#[derive(Debug)]
pub struct Family<'a> {
    data: &'a mut FamilyData,
}

impl Family<'_> {
    /// Adds the sample with these labels (none for `&[]`). A label set given
    /// twice is a bug: it panics in debug builds and is dropped otherwise,
    /// since Prometheus would refuse the whole scrape.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl SampleValue) -> &mut Self {
        let mut rendered = String::new();
        if !labels.is_empty() {
            rendered.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                debug_assert!(valid_label_name(name), "invalid label name {name:?}");
                debug_assert!(
                    labels[..i].iter().all(|(other, _)| other != name),
                    "label {name} given twice"
                );
                if i > 0 {
                    rendered.push(',');
                }
                rendered.push_str(name);
                rendered.push_str("=\"");
                escape_label_value(value, &mut rendered);
                rendered.push('"');
            }
            rendered.push('}');
        }
        let fresh = !self.data.seen.contains(&rendered);
        debug_assert!(fresh, "{}{rendered} sampled twice", self.data.name);
        if fresh {
            let samples = &mut self.data.samples;
            samples.push_str(&self.data.name);
            samples.push_str(&rendered);
            samples.push(' ');
            value.write_to(samples);
            samples.push('\n');
            self.data.seen.insert(rendered);
        }
        self
    }
}

/// A sample's value. Integers are written exactly, not through `f64`, so
/// counters past 2^53 keep their last digits.
pub trait SampleValue {
    /// Appends the value as the format spells it.
    fn write_to(&self, out: &mut String);
}

macro_rules! integer_value {
    ($($type:ty),*) => {$(
        impl SampleValue for $type {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_value!(u8, u16, u32, u64, usize, i32, i64);

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Debug is the shortest round-trip spelling, with an exponent
            // for large and small values, which Prometheus parses.
            let _ = write!(out, "{self:?}");
        }
    }
}

impl SampleValue for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__`-prefixed (reserved).
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes only backslash and newline.
fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        let mut metrics = Exposition::new();
        metrics
            .gauge("turnx_build_info", "Build information.")
            .sample(&[("version", "0.1.0")], 1u64);
        metrics
            .counter("turnx_packets_total", "Relayed packets.")
            .sample(
                &[("side", "client"), ("direction", "in"), ("path", "kernel")],
                u64::MAX,
            )
            .sample(
                &[
                    ("side", "peer"),
                    ("direction", "out"),
                    ("path", "userspace"),
                ],
                3u32,
            );
        metrics
            .gauge(
                "turnx_user_allocations",
                "Allocations per user.\nA \\ line.",
            )
            .sample(&[("user", "1700000000:a\"b\\c\nd")], 2usize)
            .sample(&[("user", "")], 0i64);
        // Reopening adds to the family without a second header.
        metrics.counter("turnx_packets_total", "ignored").sample(
            &[("side", "peer"), ("direction", "in"), ("path", "kernel")],
            5u64,
        );
        metrics
            .gauge("turnx_start_time_seconds", "Start time.")
            .sample(&[], 1.7e9);
        metrics
            .gauge("turnx_ratio", "A ratio.")
            .sample(&[], f64::NAN);
        metrics
            .gauge("turnx_ready", "Whether the relay serves.")
            .sample(&[], true);
        metrics.counter("turnx_empty_total", "No samples yet.");
        metrics.finish()
    }

    #[test]
    fn text_format() {
        assert_eq!(
            example(),
            concat!(
                "# HELP turnx_build_info Build information.\n",
                "# TYPE turnx_build_info gauge\n",
                "turnx_build_info{version=\"0.1.0\"} 1\n",
                "# HELP turnx_packets_total Relayed packets.\n",
                "# TYPE turnx_packets_total counter\n",
                "turnx_packets_total{side=\"client\",direction=\"in\",path=\"kernel\"} 18446744073709551615\n",
                "turnx_packets_total{side=\"peer\",direction=\"out\",path=\"userspace\"} 3\n",
                "turnx_packets_total{side=\"peer\",direction=\"in\",path=\"kernel\"} 5\n",
                "# HELP turnx_user_allocations Allocations per user.\\nA \\\\ line.\n",
                "# TYPE turnx_user_allocations gauge\n",
                "turnx_user_allocations{user=\"1700000000:a\\\"b\\\\c\\nd\"} 2\n",
                "turnx_user_allocations{user=\"\"} 0\n",
                "# HELP turnx_start_time_seconds Start time.\n",
                "# TYPE turnx_start_time_seconds gauge\n",
                "turnx_start_time_seconds 1700000000.0\n",
                "# HELP turnx_ratio A ratio.\n",
                "# TYPE turnx_ratio gauge\n",
                "turnx_ratio NaN\n",
                "# HELP turnx_ready Whether the relay serves.\n",
                "# TYPE turnx_ready gauge\n",
                "turnx_ready 1\n",
                "# HELP turnx_empty_total No samples yet.\n",
                "# TYPE turnx_empty_total counter\n",
            )
        );
    }

    #[test]
    fn values() {
        let render = |value: &dyn Fn(&mut String)| {
            let mut out = String::new();
            value(&mut out);
            out
        };
        assert_eq!(render(&|o| f64::INFINITY.write_to(o)), "+Inf");
        assert_eq!(render(&|o| f64::NEG_INFINITY.write_to(o)), "-Inf");
        assert_eq!(render(&|o| 0.25f64.write_to(o)), "0.25");
        assert_eq!(render(&|o| 1e300f64.write_to(o)), "1e300");
        assert_eq!(render(&|o| (-3i64).write_to(o)), "-3");
        assert_eq!(render(&|o| false.write_to(o)), "0");
    }

    #[test]
    fn names() {
        for good in ["a", "turnx_x_total", "_a:b", "A9"] {
            assert!(valid_metric_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!valid_metric_name(bad), "{bad}");
        }
        for good in ["a", "_a", "side", "A_9"] {
            assert!(valid_label_name(good), "{good}");
        }
        for bad in ["", "__name__", "a:b", "9", "a-b"] {
            assert!(!valid_label_name(bad), "{bad}");
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "sampled twice")]
    fn repeated_label_sets_are_caught() {
        let mut metrics = Exposition::new();
        metrics
            .counter("turnx_x_total", "X.")
            .sample(&[("a", "1")], 1u64)
            .sample(&[("a", "1")], 2u64);
    }

    #[test]
    fn promtool_accepts_the_output() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                println!("skipped: promtool not runnable ({error}); apt-get install prometheus");
                return;
            }
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(example().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // promtool exits 1 on a parse error and 3 on a lint finding.
        assert!(output.status.success(), "promtool: {report}");
        assert_eq!(report.trim(), "", "promtool: {report}");
    }
}
