//! `spacer bench`: drive a running broker through the library and report
//! throughput and latency; with `--raw`, first measure the same namespace
//! work done in this process (the floor), in the same run.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};
use spacer_client::{Client, NsType, Spaces};
use spacer_proto::fd::{self, Which};

use crate::Failure;

/// What to ask for.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `Rooms` of these types.
    Rooms(Spaces),
    /// `Subspace(user+pid)`, closed right away.
    Subspace,
}

/// Results of one measured run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests measured (after warm-up).
    pub requests: usize,
    /// Concurrent connections.
    pub concurrency: usize,
    /// Requests per second over the measured wall time.
    pub per_sec: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// Worst latency.
    pub max_us: u64,
}

impl Report {
    fn from(mut lat: Vec<u32>, wall: Duration, concurrency: usize) -> Report {
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                return 0;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            u64::from(lat[i])
        };
        Report {
            requests: lat.len(),
            concurrency,
            per_sec: lat.len() as f64 / wall.as_secs_f64(),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            max_us: u64::from(lat.last().copied().unwrap_or(0)),
        }
    }

    /// The one-object JSON form.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "concurrency": self.concurrency,
            "per_sec": (self.per_sec * 10.0).round() / 10.0,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
        })
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label:<7} {:>7} requests  concurrency {:>3}  {:>9.0}/s  p50 {:>6} µs  p99 {:>6} µs  max {:>7} µs",
            self.requests, self.concurrency, self.per_sec, self.p50_us, self.p99_us, self.max_us
        )
    }
}

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// How long `Client::private()` takes to be ready to serve: start the
/// worker and complete a first request (`samples` times).
pub fn private_startup(samples: usize) -> Result<Report, Failure> {
    let mut lat = Vec::with_capacity(samples);
    let t0 = Instant::now();
    for _ in 0..samples {
        let t = Instant::now();
        let c = Client::private()?;
        drop(c.rooms(Spaces::UTS)?);
        lat.push(us(t.elapsed()));
        drop(c);
    }
    Ok(Report::from(lat, t0.elapsed(), 1))
}

/// Through the broker: `concurrency` connections, each on its own thread,
/// `requests` in all after `warmup` unmeasured ones per connection.
pub fn through_broker(
    socket: &Option<PathBuf>,
    load: Load,
    requests: usize,
    concurrency: usize,
    warmup: usize,
) -> Result<Report, Failure> {
    let concurrency = concurrency.max(1);
    let clients = (0..concurrency)
        .map(|_| crate::connect(socket))
        .collect::<Result<Vec<Client>, Failure>>()?;
    measure(clients, load, requests, warmup)
}

/// Through private workers (one per connection, no broker).
pub fn through_private(
    load: Load,
    requests: usize,
    concurrency: usize,
    warmup: usize,
) -> Result<Report, Failure> {
    let clients = (0..concurrency.max(1))
        .map(|_| Client::private().map_err(Failure::Service))
        .collect::<Result<Vec<Client>, Failure>>()?;
    measure(clients, load, requests, warmup)
}

fn measure(
    clients: Vec<Client>,
    load: Load,
    requests: usize,
    warmup: usize,
) -> Result<Report, Failure> {
    let concurrency = clients.len();
    let start = Arc::new(Barrier::new(concurrency + 1));
    let per = requests.div_ceil(concurrency);
    let threads: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let start = start.clone();
            std::thread::spawn(move || -> Result<Vec<u32>, spacer_client::Error> {
                let warm = (0..warmup).try_for_each(|_| one(&c, load));
                // Every thread reaches the barrier, or the others wait forever.
                start.wait();
                warm?;
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    one(&c, load)?;
                    lat.push(us(t.elapsed()));
                }
                Ok(lat)
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(per * concurrency);
    let mut first_err = None;
    for t in threads {
        match t.join() {
            Ok(Ok(lat)) => all.extend(lat),
            Ok(Err(e)) => first_err = first_err.or(Some(Failure::Service(e))),
            Err(_) => {
                first_err = first_err.or(Some(Failure::Msg("a bench thread panicked".into())))
            }
        }
    }
    let wall = t0.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(Report::from(all, wall, concurrency))
}

fn one(c: &Client, load: Load) -> Result<(), spacer_client::Error> {
    match load {
        Load::Rooms(s) => drop(c.rooms(s)?),
        Load::Subspace => drop(c.subspace(Spaces::USER | Spaces::PID)?),
    }
    Ok(())
}

/// The floor: the worker's namespace work (`unshare`, mount private for
/// mnt, take an fd, `setns` back) in this process, on this one thread.
/// Must run while the process is single-threaded (setns into a time or
/// mount namespace needs that).
pub fn raw(spaces: Spaces, requests: usize, warmup: usize) -> Result<Report, Failure> {
    let os = |what: &str| {
        let what = what.to_owned();
        move |e: nix::errno::Errno| Failure::Os {
            what,
            source: e.into(),
        }
    };
    let me = fd::pidfd_open(std::process::id() as i32).map_err(|source| Failure::Os {
        what: "opening own pidfd".into(),
        source,
    })?;
    let homes: Vec<(NsType, OwnedFd)> = spaces
        .types()
        .map(|t| current(&me, t).map(|f| (t, f)))
        .collect::<Result<_, _>>()
        .map_err(|source| Failure::Os {
            what: "opening own namespaces".into(),
            source,
        })?;
    let mut lat = Vec::with_capacity(requests);
    let mut t0 = Instant::now();
    for i in 0..warmup + requests {
        if i == warmup {
            t0 = Instant::now();
        }
        let t = Instant::now();
        let mut made = Vec::with_capacity(homes.len());
        for (ty, home) in &homes {
            let flag = CloneFlags::from_bits_retain(ty.flag().bits() as i32);
            unshare(flag).map_err(os(&format!("raw: creating {ty} namespace (needs root)")))?;
            if *ty == NsType::Mnt {
                nix::mount::mount::<str, str, str, str>(
                    None,
                    "/",
                    None,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None,
                )
                .map_err(os("raw: making / private"))?;
            }
            made.push(current(&me, *ty).map_err(|source| Failure::Os {
                what: format!("raw: opening the new {ty} namespace"),
                source,
            })?);
            setns(home, flag).map_err(os(&format!("raw: returning to own {ty} namespace")))?;
        }
        drop(made);
        if i >= warmup {
            lat.push(us(t.elapsed()));
        }
    }
    Ok(Report::from(lat, t0.elapsed(), 1))
}

fn current(me: &OwnedFd, t: NsType) -> std::io::Result<OwnedFd> {
    fd::pidfd_namespace(me.as_fd(), t, Which::ForChildren).or_else(|_| {
        File::open(format!("/proc/thread-self/ns/{}", t.proc_for_children())).map(OwnedFd::from)
    })
}

/// Prints a report (and the floor, if measured).
pub fn print(broker: &Report, raw: Option<&Report>, json: bool) {
    if json {
        let mut v = broker.json();
        if let Some(r) = raw {
            v["raw"] = r.json();
            v["ratio_to_raw"] =
                serde_json::json!(((broker.per_sec / r.per_sec) * 1000.0).round() / 1000.0);
        }
        println!("{v}");
    } else {
        if let Some(r) = raw {
            println!("{}", r.line("raw"));
        }
        println!("{}", broker.line("broker"));
        if let Some(r) = raw {
            println!(
                "ratio   {:.3} of the in-process floor",
                broker.per_sec / r.per_sec
            );
        }
    }
}

/// Prints private-mode figures beside the broker's.
pub fn print_private(startup: &Report, private: &Report, broker: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "private_startup": {"samples": startup.requests, "p50_us": startup.p50_us, "p99_us": startup.p99_us, "max_us": startup.max_us},
                "private": private.json(),
                "broker": broker.json(),
            })
        );
    } else {
        println!(
            "private start-up (worker started and first request answered): p50 {} µs  p99 {} µs over {} starts",
            startup.p50_us, startup.p99_us, startup.requests
        );
        println!("{}", private.line("private"));
        println!("{}", broker.line("broker"));
    }
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Memory of the broker and its workers, idle and with `clients` connected
/// idle clients (each has made one request).
pub fn memory(socket: &Option<PathBuf>, clients: usize, json: bool) -> Result<(), Failure> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let first = crate::connect(socket)?;
    let broker = first
        .service_pid()
        .ok_or_else(|| Failure::Msg("cannot tell the broker's pid".into()))?;
    drop(first.rooms(Spaces::UTS)?);
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kib(broker);
    let sup = children(broker).first().copied().unwrap_or(0);
    let is_spawner = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .is_ok_and(|c| c.trim() == "spacer-spawner")
    };
    let (spawner, workers): (Vec<i32>, Vec<i32>) =
        children(sup).into_iter().partition(|&p| is_spawner(p));
    let worker_rss: Vec<u64> = workers.iter().map(|&p| rss_kib(p)).collect();
    let spawner_rss: Vec<u64> = spawner.iter().map(|&p| rss_kib(p)).collect();
    let mut held = Vec::with_capacity(clients);
    for _ in 0..clients {
        let c = crate::connect(socket)?;
        drop(c.rooms(Spaces::UTS)?);
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    let loaded = rss_kib(broker);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "broker_idle_rss_kib": idle,
                "idle_clients": clients,
                "broker_rss_kib_with_clients": loaded,
                "supervisor_rss_kib": rss_kib(sup),
                "worker_rss_kib": worker_rss,
                "spawner_rss_kib": spawner_rss,
            })
        );
    } else {
        println!("broker idle RSS            {idle} KiB");
        println!("broker with {clients} idle clients {loaded} KiB");
        println!("worker supervisor RSS      {} KiB", rss_kib(sup));
        println!("serving workers RSS        {worker_rss:?} KiB");
        println!("spawner RSS                {spawner_rss:?} KiB");
    }
    Ok(())
}
