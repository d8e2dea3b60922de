//! The `warren-perf` binary: parses the flags and runs [`warren_perf::run`].

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = match warren_perf::Options::from_args(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "warren-perf: cannot start runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    // `Stdout` (not the lock, which is not `Send`) for the per-second lines: each write locks.
    let mut stdout = std::io::stdout();
    let result = rt.block_on(warren_perf::run(&opts, &mut stdout));
    let mut out = stdout.lock();
    match result {
        Ok(summary) => {
            let written = if opts.json {
                serde_json::to_writer(&mut out, &summary)
                    .map_err(std::io::Error::other)
                    .and_then(|()| writeln!(out))
            } else {
                warren_perf::write_summary(&summary, &mut out)
            };
            if written.is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "warren-perf: {e}");
            ExitCode::FAILURE
        }
    }
}
