//! `tcpstate trace`: every transition, one line each, until Ctrl-C, SIGTERM or
//! `--duration`, then the summary.

use std::{
    collections::HashMap,
    io::{self, Write},
    rc::Rc,
    time::Duration,
};

use tcpstate_common::Event;

use crate::{
    cli::TraceArgs,
    cmd::{
        ident::Resolver,
        session::{Consumer, Session},
    },
    model::{events::TcpState, filter::Filter},
    probe::{LoadOptions, Probe},
    render::{clock::Clock, trace::TraceWriter},
};

/// How often the kernel's cgroup filter map is refilled (new containers match).
const CGROUP_REFRESH: Duration = Duration::from_secs(1);

/// A cgroup id's identity as the writer takes it: JSON members and the CONTAINER cell.
struct Shown {
    members: Box<[u8]>,
    short: Box<str>,
}

struct Trace<W: Write> {
    filter: Filter,
    /// `filter` is empty: skip it per event.
    all: bool,
    out: TraceWriter<W>,
    shown: u64,
    resolver: Resolver,
    /// Per cgroup id (resolved ones only: an id not found yet is looked up again).
    by_cgroup: HashMap<u64, Rc<Shown>>,
    last: Option<(u64, Rc<Shown>)>,
    container_column: bool,
}

impl<W: Write> Trace<W> {
    fn shown_for(&mut self, id: u64) -> Rc<Shown> {
        if let Some((l, s)) = &self.last {
            if *l == id {
                return s.clone();
            }
        }
        let s = match self.by_cgroup.get(&id) {
            Some(s) => s.clone(),
            None => {
                let ident = self.resolver.cgroup(id);
                let s = Rc::new(Shown {
                    members: ident.json_members().into_bytes().into(),
                    short: ident.short().into(),
                });
                if ident.cgroup.is_some() {
                    self.by_cgroup.insert(id, s.clone());
                }
                s
            }
        };
        self.last = Some((id, s.clone()));
        s
    }
}

impl<W: Write> Consumer for Trace<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if self.all || self.filter.matches(ev) {
            self.shown += 1;
            let s = self.shown_for(ev.cgroup_id);
            let col = self.container_column.then_some(&*s.short);
            self.out.transition_ident(ev, &s.members, col)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
    fn interval(&mut self, probe: &mut Probe) -> io::Result<()> {
        self.resolver.refresh_filter(&self.filter, probe);
        self.by_cgroup.clear();
        self.last = None;
        Ok(())
    }
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    if args.states.contains(&TcpState::TimeWait) {
        eprintln!(
            "tcpstate: note: the kernel never reports TIME_WAIT in inet_sock_set_state \
             (tcp_time_wait() hands over to a timewait socket); --state TIME_WAIT matches nothing here"
        );
    }
    let filter = args.filter.filter().with_states(&args.states);
    let opts = LoadOptions {
        filter: filter.kernel(),
        // 104-byte events (the identity fields): 8 MiB holds ~75k, the ~47k a
        // 4 MiB ring held with 88-byte ones and then some.
        ring_bytes: 8 << 20,
        ..LoadOptions::default()
    };
    let mut session = Session::start("tracing TCP state transitions", &opts, true)?;
    let mut resolver = Resolver::new();
    resolver.refresh_filter(&filter, &mut session.probe);
    let container_column = filter.by_cgroup() || args.wide || resolver.any_container();
    let interval = filter.by_cgroup().then_some(CGROUP_REFRESH);
    let mut trace = Trace {
        // The container and cgroup filters are the probe's (its CGROUPS map);
        // `matches` checks the rest.
        all: Filter {
            containers: Vec::new(),
            cgroups: Vec::new(),
            ..filter.clone()
        }
        .is_empty(),
        filter,
        out: TraceWriter::new(
            // TraceWriter buffers itself.
            io::stdout().lock(),
            args.json,
            args.wide,
            Clock::new(),
        ),
        shown: 0,
        resolver,
        by_cgroup: HashMap::new(),
        last: None,
        container_column,
    };
    trace.out.header(container_column)?;
    let result = session.run(&mut trace, args.duration, interval).await;
    let summary = session.summary(Some(trace.shown), 0);
    result?;
    trace.out.summary(&summary)?;
    Ok(())
}
