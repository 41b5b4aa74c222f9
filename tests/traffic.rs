//! Traffic metrics and traffic rules (issue 19, items 1 and 2): load from a client through
//! the real proxy while releases of the sample app that fail 5 % of requests, or answer
//! 300 ms slower, are deployed: the monitor rolls them back by the rule they breach and names
//! both releases' figures; a healthy release passes; too little traffic is inconclusive, never
//! a breach; `/metrics` and `ferry status --json` show each instance's figures.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{GOOD, Options, Rel, Sandbox};

/// `max_p99` just under the slow release's added 300 ms: the healthy releases keep the
/// widest margin a loaded machine can need, the slow one breaches whatever the machine.
const MONITOR: &str = "[monitor]
duration = \"8s\"
interval = \"1s\"
max_error_rate = 0.01
max_p99 = \"290ms\"
min_requests = 20
window = \"10s\"
";

/// Clients sending `GET /` through the proxy until dropped; counts what came back.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let url = format!("{url}/");
                std::thread::spawn(move || {
                    let agent = client();
                    while !stop.load(Ordering::Relaxed) {
                        match agent.get(&url).send().map(|r| r.status().as_u16()) {
                            Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn client() -> reqwest::blocking::Client {
    crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The monitor step's output of the last deployment of staging.
fn monitor_output(s: &Sandbox) -> String {
    let d = &s.ferry(&["history", "staging", "--json"]).json()[0];
    let id = d["id"].as_i64().unwrap().to_string();
    let show = s.ferry(&["show", &id, "--json"]).json();
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "monitor")
        .map(|st| st["output"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn traffic_rules_roll_back_failing_and_slow_releases_and_pass_healthy_ones() {
    let mut s = Sandbox::with(
        &[
            Rel("v1", GOOD),
            Rel("v2-errors", "error_percent = 5\n"),
            Rel("v2-slow", "delay_ms = 300\n"),
            Rel("v3", GOOD),
            Rel("v4", GOOD),
        ],
        Options {
            tables: MONITOR,
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1");
    let (_, first_pid) = s.serving("staging");
    let load = Load::start(&s.url("staging"), 6);

    for (tag, rule, figures) in [
        (
            "v2-errors",
            "max_error_rate breached: ",
            "more than the 1% allowed",
        ),
        (
            "v2-slow",
            "max_p99 breached: p99 ",
            "above the 290ms allowed",
        ),
    ] {
        let run = s.ferry(&["deploy", "staging", tag]);
        assert_eq!(run.code(), 1, "{tag}: {run}");
        let out = run.stdout();
        assert!(out.contains(rule), "{tag}: {run}");
        assert!(out.contains(figures), "{tag}: {run}");
        // the previous release's figures, taken at the switch, are named too
        assert!(out.contains("the previous release: "), "{tag}: {run}");
        assert!(out.contains("rolled back to v1"), "{tag}: {run}");
        let d = &s.ferry(&["history", "staging", "--json"]).json()[0];
        assert_eq!(d["state"], "rolled_back", "{tag}");
        assert_eq!(s.serving("staging"), ("v1".to_string(), first_pid), "{tag}");
    }

    // a healthy release passes, its traffic judged every round
    let run = s.deploy_ok("staging", "v3");
    let out = monitor_output(&s);
    assert!(
        out.contains("traffic rules over the last 10s"),
        "{run}\n{out}"
    );
    assert!(out.contains("  traffic: 0.0% of "), "{out}");
    assert!(out.contains("traffic rules held: 0.0% of "), "{out}");
    assert_eq!(s.serving("staging").0, "v3");

    // /metrics and status show the serving instance's figures
    let (code, metrics) = s.get("/metrics").unwrap();
    assert_eq!(code, 200);
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains("release=\"v3"))
            .unwrap_or_else(|| panic!("no {prefix} for v3 in\n{metrics}"))
            .to_string()
    };
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    assert!(
        value(&line(
            "ferry_upstream_requests_total{environment=\"staging\""
        )) > 40.0
    );
    let ok = metrics
        .lines()
        .find(|l| {
            l.starts_with("ferry_upstream_responses_total{")
                && l.contains("release=\"v3")
                && l.contains("class=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("no 2xx responses for v3 in\n{metrics}"));
    assert!(value(ok) > 40.0, "{metrics}");
    assert_eq!(
        value(&line("ferry_upstream_proxy_errors_total{")),
        0.0,
        "{metrics}"
    );
    let p99 = value(&line("ferry_upstream_latency_seconds{"));
    assert!(p99 > 0.0, "{metrics}");
    assert!(metrics.contains("quantile=\"0.99\""), "{metrics}");
    assert!(metrics.contains("# TYPE ferry_upstream_latency_seconds summary"));
    let status = s.ferry(&["status", "--json"]).json();
    let traffic = &status[0]["traffic"][0];
    assert!(
        traffic["release"].as_str().unwrap().starts_with("v3"),
        "{status}"
    );
    assert!(traffic["requests"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(traffic["errors"], 0, "{status}");
    let table = s.ferry(&["status"]).stdout();
    assert!(table.contains("traffic v3"), "{table}");

    // the clients got the failing release's 500s while it served
    assert!(load.ok.load(Ordering::Relaxed) > 100);
    assert!(load.failed.load(Ordering::Relaxed) > 0);
    drop(load);

    // too little traffic: the rules cannot judge, which is never a breach
    let run = s.deploy_ok("staging", "v4");
    let out = monitor_output(&s);
    assert!(out.contains("inconclusive: 0 request(s)"), "{run}\n{out}");
    assert!(
        out.contains("traffic rules inconclusive at the end"),
        "{run}\n{out}"
    );
    assert_eq!(s.serving("staging").0, "v4");
}
