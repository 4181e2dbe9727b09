//! Lines to stdout and stderr that a closed pipe cannot turn into a crash.
//!
//! `println!`, `eprintln!` and simple_logger (which writes with `eprintln!`) panic when the
//! write fails, and a release build aborts on a panic. Stdout or stderr being a pipe whose
//! reader went away (`edgepass … 2>&1 | head`, a log daemon restarted, a closed terminal)
//! is not a reason for a tunnel to die: here a line that cannot be written is dropped.

use std::fmt;
use std::io::{self, Write};

use log::{LevelFilter, Log, Metadata, Record};
use simple_logger::SimpleLogger;

/// Write `line` and a newline to stdout in one write; a failure drops the line.
pub fn out(line: fmt::Arguments) {
    let _ = write_line(&mut io::stdout().lock(), line);
}

/// Write `line` and a newline to stderr in one write; a failure drops the line.
pub fn err(line: fmt::Arguments) {
    let _ = write_line(&mut io::stderr().lock(), line);
}

/// `line` and a newline, formatted first so that it reaches `w` in one write (stderr is
/// unbuffered: piece by piece, lines of two threads could interleave).
fn write_line(w: &mut impl Write, line: fmt::Arguments) -> io::Result<()> {
    let mut s = line.to_string();
    s.push('\n');
    w.write_all(s.as_bytes())?;
    w.flush()
}

/// The process's logger: simple_logger's levels and line format (`LEVEL [target] message`),
/// written with [`err`].
pub struct Logger {
    levels: SimpleLogger,
}

impl Logger {
    /// Install it: `edgepass`'s own lines at `own`, dependencies' at warn and above.
    pub fn init(own: LevelFilter) -> Result<(), log::SetLoggerError> {
        let levels = SimpleLogger::new()
            .with_level(LevelFilter::Warn)
            .with_module_level("edgepass", own);
        log::set_max_level(levels.max_level());
        log::set_boxed_logger(Box::new(Logger { levels }))
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.levels.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            err(format_args!("{}", Line(record)));
        }
    }

    fn flush(&self) {}
}

/// A record as simple_logger prints it: the level padded to five, the target (or the module
/// path) in brackets, the message.
struct Line<'a, 'b>(&'a Record<'b>);

impl fmt::Display for Line<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let r = self.0;
        let target = match r.target() {
            "" => r.module_path().unwrap_or_default(),
            t => t,
        };
        write!(f, "{:<5} [{}] {}", r.level(), target, r.args())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    #[test]
    fn formats_as_simple_logger_does() {
        let args = format_args!("tunnel on {}", 7);
        let rec = Record::builder()
            .level(Level::Warn)
            .target("edgepass::server")
            .args(args)
            .build();
        assert_eq!(
            Line(&rec).to_string(),
            "WARN  [edgepass::server] tunnel on 7"
        );
        let rec = Record::builder()
            .level(Level::Error)
            .target("")
            .module_path(Some("edgepass::client"))
            .args(format_args!("x"))
            .build();
        assert_eq!(Line(&rec).to_string(), "ERROR [edgepass::client] x");
    }

    /// A writer that refuses every write, as a pipe without a reader does.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_an_error_not_a_panic() {
        let e = write_line(&mut Closed, format_args!("lost")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        let mut v = Vec::new();
        write_line(&mut v, format_args!("a {}", 1)).unwrap();
        assert_eq!(v, b"a 1\n");
    }
}
