//! A real Prometheus (Debian package `prometheus`) for tests: started in a
//! namespace with a configuration of its own in a temporary directory,
//! scraping given targets every second, queried over its HTTP API, and
//! stopped by PID when dropped. Also the small HTTP client and text-format
//! reader that tests of HTTP endpoints need, without an HTTP or JSON crate.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{Netns, process::TempDir, wait_for};

/// How long one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A Prometheus server of this run.
pub struct Prometheus<'a> {
    ns: &'a Netns,
    child: Child,
    /// Where its web server (and API) listens, in `ns`.
    pub address: SocketAddr,
    dir: TempDir,
}

impl<'a> Prometheus<'a> {
    /// Starts Prometheus in `ns`, listening on `address`, with one job
    /// `job` that scrapes `targets` (`/metrics`) every second; its TSDB
    /// lives in a temporary directory removed on drop. Waits up to 30 s
    /// for `/-/ready`.
    pub fn start(ns: &'a Netns, address: SocketAddr, job: &str, targets: &[SocketAddr]) -> Self {
        let dir = TempDir::new("turnxprom");
        let targets = targets
            .iter()
            .map(|target| format!("\"{target}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // scrape_timeout must not exceed the interval; the global default
        // (10 s) would.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{targets}]\n"
        );
        let config_path = dir.0.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("creating the log");
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian package prometheus)");
        let mut prometheus = Prometheus {
            ns,
            child,
            address,
            dir,
        };
        let ready = wait_for(Duration::from_secs(30), || {
            if let Some(status) = prometheus.child.try_wait().expect("waiting for prometheus") {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            matches!(prometheus.get("/-/ready"), Ok((200, _))).then_some(())
        });
        if ready.is_none() {
            panic!(
                "prometheus was not ready within 30 s:\n{}",
                prometheus.log()
            );
        }
        prometheus
    }

    /// A GET of `path_and_query` on its web server.
    pub fn get(&self, path_and_query: &str) -> std::io::Result<(u16, String)> {
        http_get(self.ns, self.address, path_and_query)
    }

    /// The value of an instant query whose answer is one sample (such as a
    /// `sum(...)`), `None` for an empty answer. Panics when the query
    /// fails or the answer is not a vector or scalar.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = self
            .get(&path)
            .unwrap_or_else(|err| panic!("querying prometheus for {promql}: {err}"));
        assert!(
            status == 200 && body.contains("\"status\":\"success\""),
            "prometheus answered {status} to {promql}: {body}"
        );
        first_value(&body).unwrap_or_else(|| panic!("no value in the answer to {promql}: {body}"))
    }

    /// Waits up to `limit` for a scrape of `job` that began after `after`
    /// and succeeded (`up == 1`); true if one came.
    pub fn wait_for_scrape_after(
        &self,
        job: &str,
        after: std::time::SystemTime,
        limit: Duration,
    ) -> bool {
        let after = after
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a time after 1970")
            .as_secs_f64();
        // timestamp() of a selector is the sample's (the scrape's start);
        // of any other expression, such as `up == 1`, the query's time.
        let scraped = format!("timestamp(up{{job=\"{job}\"}})");
        let up = format!("up{{job=\"{job}\"}}");
        wait_for(limit, || {
            let at = self.query(&scraped)?;
            (at > after && self.query(&up) == Some(1.0)).then_some(())
        })
        .is_some()
    }

    /// Its log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling the child we spawned, by its PID (`ip netns
        // exec` execs prometheus in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `"value":[<time>,"<number>"]` of a Prometheus API answer;
/// `Some(None)` when the result is empty.
fn first_value(body: &str) -> Option<Option<f64>> {
    if body.contains("\"result\":[]") {
        return Some(None);
    }
    let start = body.find("\"value\":[")? + "\"value\":[".len();
    let rest = &body[start..];
    let quoted = &rest[rest.find(",\"")? + 2..];
    let number = &quoted[..quoted.find('"')?];
    number.parse().ok().map(Some)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `GET path_and_query` from inside `ns` to `address`, with
/// `Connection: close`: the status code and the body (chunked bodies are
/// decoded). Each step times out after 5 s.
pub fn http_get(
    ns: &Netns,
    address: SocketAddr,
    path_and_query: &str,
) -> std::io::Result<(u16, String)> {
    http_request(ns, address, "GET", path_and_query)
}

/// As [`http_get`] with any method (and no body).
pub fn http_request(
    ns: &Netns,
    address: SocketAddr,
    method: &str,
    path_and_query: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = ns.run(|| TcpStream::connect_timeout(&address, HTTP_TIMEOUT))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let invalid = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {text}"))
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| invalid("bad chunked body"))?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// The sum of the samples of family `name` in a text exposition (format
/// 0.0.4) whose labels include every pair of `labels`; `None` when no
/// sample matches.
pub fn sum_samples(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let has = |(key, wanted): &(&str, &str)| {
            series_labels
                .split(',')
                .any(|pair| pair == format!("{key}=\"{wanted}\""))
        };
        if labels.iter().all(has) {
            let value: f64 = value.parse().ok()?;
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_api_answer() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.5,"42"]}]}}"#;
        assert_eq!(first_value(vector), Some(Some(42.0)));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(first_value(empty), Some(None));
    }

    #[test]
    fn sums_matching_samples() {
        let text = "# TYPE t counter\nt{a=\"1\",b=\"x\"} 2\nt{a=\"2\",b=\"x\"} 3\nu 7\n";
        assert_eq!(sum_samples(text, "t", &[("b", "x")]), Some(5.0));
        assert_eq!(sum_samples(text, "t", &[("a", "2")]), Some(3.0));
        assert_eq!(sum_samples(text, "u", &[]), Some(7.0));
        assert_eq!(sum_samples(text, "t", &[("a", "3")]), None);
    }

    #[test]
    fn decodes_chunks_and_encodes_queries() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        assert_eq!(
            percent_encode("sum(x{a=\"b\"})"),
            "sum%28x%7Ba%3D%22b%22%7D%29"
        );
    }
}
