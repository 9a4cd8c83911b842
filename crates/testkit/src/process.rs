//! Child processes under supervision: [`Proc`] keeps a child's log lines, waits for a line
//! that says it is ready, freezes it (SIGSTOP until a guard drops), kills it (SIGKILL) or
//! terminates it (SIGTERM and a grace period), and kills it when dropped, also when a test
//! panics, so no test leaves a process behind. [`address_space_capped`] runs a program as on a
//! machine with that much memory.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::wait::blocking::eventually;

/// How long a process may take to log that it is ready: generous for a debug build opening
/// its stores on a loaded machine.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// How long a process that exited may take to hand its last log lines over: the pipe closes
/// when it exits, unless a process it started still holds it.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// The output stream of a child that [`Proc`] keeps as its log (the other goes nowhere: a
/// full pipe nobody reads would block the child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error, where servers log.
    Stderr,
}

/// A child process, SIGKILLed when dropped. Its log (the lines of one output [`Stream`]) is
/// read on a thread of its own and kept.
pub struct Proc {
    name: String,
    child: Mutex<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// The thread reading the log; joined once the child has exited, to have every line.
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Proc {
    /// Spawns `command`, called `name` in failures, keeping the lines of `log` as its log.
    pub fn spawn(name: impl Into<String>, mut command: Command, log: Stream) -> Proc {
        let name = name.into();
        let (stdout, stderr) = match log {
            Stream::Stdout => (Stdio::piped(), Stdio::null()),
            Stream::Stderr => (Stdio::null(), Stdio::piped()),
        };
        let mut child = command
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {name} ({command:?}): {error}"));
        let stream: Box<dyn Read + Send> = match log {
            Stream::Stdout => Box::new(child.stdout.take().expect("piped stdout")),
            Stream::Stderr => Box::new(child.stderr.take().expect("piped stderr")),
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        Proc {
            name,
            child: Mutex::new(child),
            log: lines,
            reader: Mutex::new(Some(reader)),
        }
    }

    /// The name it was spawned with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Its log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Its log so far, one line per line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How it exited, if it has.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap()
            .try_wait()
            .unwrap_or_else(|error| panic!("wait for {}: {error}", self.name))
    }

    /// Waits (up to [`READY_WITHIN`]) until a log line contains `marker`, and returns the first
    /// such line; panics with the log if the process exits first or never logs it.
    pub fn wait_for_line(&self, marker: &str) -> String {
        eventually(
            format_args!("{} logs a line with {marker:?}", self.name),
            READY_WITHIN,
            || {
                let find = || {
                    let log = self.log.lock().unwrap();
                    log.iter().find(|line| line.contains(marker)).cloned()
                };
                if let Some(line) = find() {
                    return Ok(line);
                }
                if let Some(status) = self.exited() {
                    // Its last lines may still be on their way from the pipe.
                    self.drain();
                    if let Some(line) = find() {
                        return Ok(line);
                    }
                    panic!("{} exited ({status}):\n{}", self.name, self.log());
                }
                Err(format!("its log:\n{}", self.log()))
            },
        )
    }

    /// Freezes the process with SIGSTOP until the returned guard is dropped (SIGCONT): its
    /// sockets stay open and its connections up, but nothing answers.
    pub fn freeze(&self) -> Frozen<'_> {
        self.signal(libc::SIGSTOP);
        Frozen { proc: self }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(self) {
        // Drop kills and reaps it.
    }

    /// What a supervisor does to stop a process (Kubernetes deleting a pod): SIGTERM, then up
    /// to `grace` for it to exit. Returns how it exited and its whole log; panics with the log
    /// if it still runs after `grace`.
    pub fn terminate(self, grace: Duration) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = eventually(
            format_args!("{} exits after SIGTERM", self.name),
            grace,
            || {
                self.exited()
                    .ok_or_else(|| format!("still running:\n{}", self.log()))
            },
        );
        self.drain();
        (status, self.lines())
    }

    /// Once the process has exited: waits (up to [`DRAIN_WITHIN`]) for the log reader to reach
    /// the end of the stream, so that every line the process wrote is in the log. A process it
    /// started that keeps the stream open is not waited for longer.
    fn drain(&self) {
        let Some(reader) = self.reader.lock().unwrap().take() else {
            return;
        };
        let until = std::time::Instant::now() + DRAIN_WITHIN;
        while !reader.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if reader.is_finished() {
            reader.join().expect("the log reader does not panic");
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (reaping
        // takes `self` by value, or happens on drop).
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "kill({pid}, {signal}) for {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A process frozen by [`Proc::freeze`]; dropping it (also when a test panics) lets the process
/// run again, so no stopped process is left behind.
#[derive(Debug)]
pub struct Frozen<'a> {
    proc: &'a Proc,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.proc.signal(libc::SIGCONT);
    }
}

/// A command that runs `program` (give it its arguments with [`Command::args`]) with its
/// address space capped at `bytes` (`ulimit -v`, which sets `RLIMIT_AS`): a machine with that
/// much memory, as far as the program can tell.
pub fn address_space_capped(program: &str, bytes: u64) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", bytes / 1024))
        .arg(program);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    #[test]
    fn a_ready_line_is_waited_for_and_the_log_kept() {
        let proc = Proc::spawn(
            "talker",
            sh("echo starting >&2; sleep 0.1; echo 'serving on 127.0.0.1:9' >&2; sleep 30"),
            Stream::Stderr,
        );
        assert_eq!(proc.wait_for_line("serving on"), "serving on 127.0.0.1:9");
        assert_eq!(proc.lines(), ["starting", "serving on 127.0.0.1:9"]);
        assert!(proc.exited().is_none());
    }

    #[test]
    fn a_process_that_exits_before_it_is_ready_fails_with_its_log() {
        let proc = Proc::spawn("quitter", sh("echo 'bad config'; exit 3"), Stream::Stdout);
        let waiting = std::panic::AssertUnwindSafe(|| proc.wait_for_line("serving"));
        let panic = std::panic::catch_unwind(waiting).unwrap_err();
        let message = panic.downcast::<String>().unwrap();
        assert!(
            message.starts_with("quitter exited (exit status: 3)"),
            "{message}"
        );
        assert!(message.ends_with("bad config"), "{message}");
    }

    #[test]
    fn terminate_sends_sigterm_and_returns_the_whole_log() {
        let proc = Proc::spawn(
            "graceful",
            sh("trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.01; done"),
            Stream::Stdout,
        );
        proc.wait_for_line("up");
        let (status, lines) = proc.terminate(Duration::from_secs(10));
        assert!(status.success(), "{status}");
        assert_eq!(lines, ["up", "bye"]);
    }

    #[test]
    fn a_frozen_process_runs_again_when_the_guard_drops() {
        let proc = Proc::spawn(
            "ticker",
            sh("while true; do echo tick; sleep 0.01; done"),
            Stream::Stdout,
        );
        proc.wait_for_line("tick");
        {
            let _frozen = proc.freeze();
            // Let the pipe drain what was written before the stop.
            std::thread::sleep(Duration::from_millis(100));
            let before = proc.lines().len();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(proc.lines().len(), before, "a frozen process wrote on");
        }
        let thawed = proc.lines().len();
        eventually("it ticks again", Duration::from_secs(10), || {
            proc.lines().len() > thawed
        });
        proc.kill();
    }

    #[test]
    fn the_address_space_cap_is_what_the_program_sees() {
        let mut command = address_space_capped("sh", 512 << 20);
        command.args(["-c", "ulimit -v"]);
        let output = command.output().unwrap();
        assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), "524288");
    }
}
