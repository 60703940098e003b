//! Scraping `tcpstate serve` as Prometheus would: one GET of /metrics at a time, timed.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// One scrape of `http://ADDR/metrics`: its wall time and the exposition's body.
pub fn scrape(addr: &str) -> Result<(Duration, String)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}: {}", head.lines().next().unwrap_or(""));
    }
    // hyper answers a close-delimited or chunked body; the bench only counts lines.
    Ok((took, body.to_string()))
}

/// Series (sample lines) in an exposition.
pub fn series(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.starts_with("tcpstate_"))
        .count()
}

/// Samples of the gauge families (`# TYPE NAME gauge`): what describes sockets that
/// exist now, and must go when they do (counters and histograms only grow). Each is
/// its name and labels, without the value.
pub fn gauge_series(body: &str) -> std::collections::BTreeSet<String> {
    let gauges: std::collections::HashSet<&str> = body
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            let name = w.next()?;
            (w.next()? == "gauge").then_some(name)
        })
        .collect();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            gauges.contains(name)
        })
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string())
        .collect()
}

/// What a scraper saw.
#[derive(Default, Clone, Debug)]
pub struct Scrapes {
    pub count: u64,
    pub failed: u64,
    pub max_ms: f64,
    pub series_first: usize,
    pub series_last: usize,
}

/// Scrapes `addr` every `every` until stopped, as a Prometheus server would.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Scrapes>,
}

impl Scraper {
    pub fn start(addr: String, every: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut s = Scrapes::default();
            while !flag.load(Ordering::Relaxed) {
                let next = Instant::now() + every;
                match scrape(&addr) {
                    Ok((took, body)) => {
                        s.count += 1;
                        s.max_ms = s.max_ms.max(took.as_secs_f64() * 1e3);
                        s.series_last = series(&body);
                        if s.count == 1 {
                            s.series_first = s.series_last;
                        }
                    }
                    Err(_) => s.failed += 1,
                }
                while !flag.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            s
        });
        Scraper { stop, handle }
    }

    pub fn stop(self) -> Scrapes {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
