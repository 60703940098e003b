//! `tcpstate trace`: every transition, one line each, until Ctrl-C, SIGTERM or
//! `--duration`, then the summary.

use std::io::{self, Write};

use tcpstate_common::Event;

use crate::{
    cli::TraceArgs,
    cmd::session::{Consumer, Session},
    model::{events::TcpState, filter::Filter},
    probe::LoadOptions,
    render::{clock::Clock, trace::TraceWriter},
};

struct Trace<W: Write> {
    filter: Filter,
    /// `filter` is empty: skip it per event.
    all: bool,
    out: TraceWriter<W>,
    shown: u64,
}

impl<W: Write> Consumer for Trace<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if self.all || self.filter.matches(ev) {
            self.shown += 1;
            self.out.transition(ev)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
        ..LoadOptions::default()
    };
    let mut session = Session::start("tracing TCP state transitions", &opts, true)?;
    let mut trace = Trace {
        all: filter.is_empty(),
        filter,
        out: TraceWriter::new(
            // TraceWriter buffers itself.
            io::stdout().lock(),
            args.json,
            args.wide,
            Clock::new(),
        ),
        shown: 0,
    };
    trace.out.header()?;
    let result = session.run(&mut trace, args.duration, None).await;
    let summary = session.summary(Some(trace.shown), 0);
    result?;
    trace.out.summary(&summary)?;
    Ok(())
}
