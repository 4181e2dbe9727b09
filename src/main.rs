//! The `edgepass` binary: parse the command line, set up logging, run the role.
//!
//! Exit codes: 0 after a clean stop, 1 when the role fails at run time (for example the port
//! is taken) or a second stop signal cuts the drain short, 2 for bad usage or configuration
//! (nothing is started).

use std::process::ExitCode;

use async_signal::{Signal, Signals};
use edgepass::cli::{self, Command};
use edgepass::config::LogLevel;
use edgepass::console;
use edgepass::shutdown::Shutdown;
use smol::stream::StreamExt;

fn main() -> ExitCode {
    edgepass::heap::restart_without_thread_cache();
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match cli::parse_args(args, &env) {
        Ok(Command::Help) => {
            console::out(format_args!("{}", cli::HELP.trim_end_matches('\n')));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            console::out(format_args!("edgepass {}", env!("CARGO_PKG_VERSION")));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Check(cfg)) => {
            return match edgepass::check(&cfg) {
                Ok(()) => {
                    console::out(format_args!(
                        "edgepass: the {} configuration is valid",
                        cfg.role
                    ));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    console::err(format_args!("edgepass: {e}"));
                    ExitCode::from(2)
                }
            };
        }
        Err(e) => {
            console::err(format_args!("edgepass: {e} (see edgepass --help)"));
            return ExitCode::from(2);
        }
    };
    let level = match cfg.log {
        LogLevel::None => log::LevelFilter::Off,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Warn | LogLevel::Event => log::LevelFilter::Warn,
        LogLevel::Error => log::LevelFilter::Error,
    };
    // Our own lines at the level asked for; dependencies log through `log` too, at warn.
    let _ = console::Logger::init(level);
    let shutdown = Shutdown::new();
    // Every task on this thread (see edgepass::rt).
    edgepass::rt::block_on(async {
        let node = match edgepass::bind(cfg, shutdown.clone()).await {
            Ok(n) => n,
            // A bad file named in the configuration: bad usage, nothing was started.
            Err(e @ edgepass::error::Error::Config(_)) => {
                console::err(format_args!("edgepass: {e}"));
                return ExitCode::from(2);
            }
            Err(e) => {
                log::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        // SIGHUP too: a tunnel started from an ssh session whose terminal goes away stops
        // as cleanly as on SIGTERM (there is no configuration file to reload).
        match Signals::new([Signal::Term, Signal::Int, Signal::Hup]) {
            Ok(mut signals) => {
                let sd = shutdown.clone();
                let stats = node.stats();
                edgepass::rt::spawn(async move {
                    if let Some(Ok(sig)) = signals.next().await {
                        log::info!("{sig:?}: stopping; open connections may finish");
                        sd.trigger();
                    }
                    // A second signal stops at once, with code 1: the drain was cut short.
                    if signals.next().await.is_some() {
                        let open = stats.active();
                        log::warn!("second signal: exiting now, {open} connections cut");
                        std::process::exit(1);
                    }
                })
                .detach();
            }
            Err(e) => log::warn!("cannot watch SIGINT/SIGTERM/SIGHUP: {e}"),
        }
        match node.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}
