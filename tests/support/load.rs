//! A load of test clients looping requests through a URL until stopped, counting what each
//! answer was: the zero-failed-requests tests (deploys, restarts, rollouts under load).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Failures kept word for word (the count goes on past them).
const KEPT: usize = 20;

/// Judges one answer: `Ok` counts it served, `Err(why)` failed.
pub type Judge = dyn Fn(u16, &str) -> Result<(), String> + Send + Sync;

/// Clients looping requests until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

/// What a load came to.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    /// The first failures: a status and body, or the client's error.
    pub failures: Vec<String>,
}

impl Load {
    /// `clients` threads, each on its own keep-alive connection, GETting `url`; an answer
    /// other than 200 fails, and a 200 is judged by `judge`.
    pub fn start(
        url: &str,
        clients: usize,
        judge: impl Fn(u16, &str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Load {
        let judge: Arc<Judge> = Arc::new(judge);
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let threads = (0..clients)
            .map(|_| {
                let (url, stop, tally, judge) =
                    (url.to_string(), stop.clone(), tally.clone(), judge.clone());
                std::thread::spawn(move || {
                    let http = crate::support::blocking_http()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let verdict = match http.get(&url).send() {
                            Err(e) => Err(e.to_string()),
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body = r.text().unwrap_or_default();
                                if status == 200 {
                                    judge(status, &body)
                                } else {
                                    Err(format!("{status}: {}", body.trim()))
                                }
                            }
                        };
                        tally.lock().unwrap().add(verdict);
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    /// Any 200 whose body contains `needle` is served.
    pub fn expecting(url: &str, clients: usize, needle: &'static str) -> Load {
        Load::start(url, clients, move |_, body| {
            if body.contains(needle) {
                Ok(())
            } else {
                Err(format!("200 without {needle:?}: {}", body.trim()))
            }
        })
    }

    /// The tally so far, the load going on.
    pub fn so_far(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Stops every client (each finishes the request it is on) and returns the tally.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.tally.lock().unwrap().clone()
    }
}

impl Tally {
    fn add(&mut self, verdict: Result<(), String>) {
        match verdict {
            Ok(()) => self.ok += 1,
            Err(why) => {
                self.failed += 1;
                if self.failures.len() < KEPT {
                    self.failures.push(why);
                }
            }
        }
    }
}
