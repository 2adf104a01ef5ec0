//! `gomaptrace`: the command-line edge. Parses flags, runs one trace, prints the report.
//! Errors become one line on stderr and a non-zero exit status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracer::session::{self, StopReason};

/// Follow every map of a running Go program: where it was created, how many entries it holds,
/// whether they are ever released. Attaches eBPF uprobes; the target is never stopped.
#[derive(Debug, Parser)]
#[command(name = "gomaptrace", version)]
struct Cli {
    /// The Go process to trace.
    #[arg(long)]
    pid: u32,
    /// Stop after this long (e.g. 30s, 500ms, 2m); default: until Ctrl-C, SIGTERM or the
    /// target's exit.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Also write the report as JSON to this file (replaced atomically).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Rows of the text report.
const TEXT_ROWS: usize = 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gomaptrace: error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let outcome = runtime.block_on(session::trace(
        cli.pid,
        cli.duration,
        stop_signal(),
        |attached| {
            eprintln!(
                "gomaptrace: attached {} probes to pid {} ({}); Ctrl-C to stop",
                attached.probes, attached.pid, attached.go_version
            );
        },
    ))?;
    if outcome.stop == StopReason::TargetExited {
        eprintln!(
            "gomaptrace: pid {} exited; the report covers what was seen until then",
            cli.pid
        );
    }
    print!("{}", outcome.report.render_text(TEXT_ROWS));
    if let Some(path) = &cli.json {
        outcome
            .report
            .write_json(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The error and its causes on one line. Library errors already quote their cause in their
/// own message (so they read well alone); a cause is only appended when it adds something.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, Ctrl-C still stops the trace.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 500ms or 2m"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|error| format!("`{text}`: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let inner = std::io::Error::other("disk full");
        let error = anyhow::Error::new(inner).context("cannot write x: disk full");
        assert_eq!(one_line(&error), "cannot write x: disk full");
        let error = anyhow::anyhow!("deeper").context("cannot write y");
        assert_eq!(one_line(&error), "cannot write y: deeper");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
