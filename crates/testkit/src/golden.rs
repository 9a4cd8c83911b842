//! Golden scripts: a story told as commands, each followed by the output it must give.
//!
//! A script is a text file of blocks; a block is a command line, a line `----`, and the
//! expected output, which ends at the first blank line. Lines starting with `#` between blocks
//! are comments, kept as they are:
//!
//! ```text
//! # Three replicas elect a leader.
//! cluster 3 seed=1
//! ----
//! node 2 leads term 2
//! ```
//!
//! [`run`] executes every command with a caller's interpreter, then compares the output with
//! the file. With `UPDATE_GOLDEN=1` in the environment it rewrites the file with the output
//! instead (review the diff before committing it). The shape follows toydb's goldenscript and
//! raft-rs's datadriven tests: the story reads as text, and a change of behaviour shows as a
//! diff of that text.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;

/// The environment variable that makes [`run`] rewrite scripts with the output they gave.
pub const UPDATE: &str = "UPDATE_GOLDEN";

/// The line between a command and its output.
const SEPARATOR: &str = "----";

/// One command of a script: its name and arguments, split at whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The first word.
    pub name: String,
    /// The other words: positional (`3`) or `key=value` options.
    pub args: Vec<String>,
    /// Its line in the script, from 1.
    pub line: usize,
}

impl Command {
    /// The positional arguments (those without `=`), parsed.
    pub fn positional<T: FromStr>(&self) -> Result<Vec<T>, String> {
        self.args
            .iter()
            .filter(|arg| !arg.contains('='))
            .map(|arg| parse(arg))
            .collect()
    }

    /// The only positional argument, parsed.
    pub fn single<T: FromStr>(&self) -> Result<T, String> {
        let mut values = self.positional()?;
        if values.len() != 1 {
            return Err(format!("{} takes one argument", self.name));
        }
        Ok(values.remove(0))
    }

    /// Option `key=value`, parsed, or `default` when absent.
    pub fn option<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        let prefix = format!("{key}=");
        match self.args.iter().find_map(|arg| arg.strip_prefix(&prefix)) {
            Some(value) => parse(value),
            None => Ok(default),
        }
    }
}

fn parse<T: FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("cannot read {text:?} as {}", std::any::type_name::<T>()))
}

/// A piece of a script.
#[derive(Debug)]
enum Piece {
    /// Comments and blank lines, kept as they are.
    Text(String),
    /// A command and the output expected of it.
    Block { command: Command, expected: String },
}

/// Runs the script at `path`: every command through `execute`, which returns its output (no
/// blank lines: a blank line ends a block) or an error that stops the script. Then compares
/// every output with the script's, or rewrites the script when `UPDATE_GOLDEN` is set.
pub fn run(path: impl AsRef<Path>, execute: impl FnMut(&Command) -> Result<String, String>) {
    run_updating(path.as_ref(), execute, std::env::var_os(UPDATE).is_some());
}

/// [`run`], rewriting the script instead of failing if `update`.
fn run_updating(
    path: &Path,
    mut execute: impl FnMut(&Command) -> Result<String, String>,
    update: bool,
) {
    let script = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let pieces = parse_script(&script).unwrap_or_else(|error| panic!("{}:{error}", path.display()));
    let mut rendered = String::new();
    let mut mismatches = Vec::new();
    for piece in &pieces {
        match piece {
            Piece::Text(text) => rendered.push_str(text),
            Piece::Block { command, expected } => {
                let line = command.line;
                let output = execute(command).unwrap_or_else(|error| {
                    panic!("{}:{line}: {}: {error}", path.display(), words(command))
                });
                let output = output.trim_end();
                assert!(
                    !output.lines().any(|l| l.trim().is_empty()),
                    "{}:{line}: the output of {} has a blank line:\n{output}",
                    path.display(),
                    words(command)
                );
                let _ = writeln!(rendered, "{}\n{SEPARATOR}", words(command));
                if !output.is_empty() {
                    let _ = writeln!(rendered, "{output}");
                }
                if output != expected {
                    mismatches.push(format!(
                        "{}:{line}: {}\n--- expected\n{expected}\n--- got\n{output}",
                        path.display(),
                        words(command)
                    ));
                }
            }
        }
    }
    if mismatches.is_empty() {
        return;
    }
    if update {
        std::fs::write(path, rendered)
            .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
        eprintln!(
            "rewrote {} ({} outputs changed)",
            path.display(),
            mismatches.len()
        );
        return;
    }
    panic!(
        "{} of the outputs differ from the script (run again with {UPDATE}=1 to rewrite it, \
         then review the diff):\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}

fn words(command: &Command) -> String {
    std::iter::once(command.name.as_str())
        .chain(command.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits a script into its pieces; an error names the line (`N: why`).
fn parse_script(script: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut lines = script.lines().enumerate().map(|(i, line)| (i + 1, line));
    while let Some((number, line)) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            text.push_str(line);
            text.push('\n');
            continue;
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        let mut words = line.split_whitespace().map(String::from);
        let command = Command {
            name: words.next().expect("a line that is not blank has a word"),
            args: words.collect(),
            line: number,
        };
        match lines.next() {
            Some((_, SEPARATOR)) => {}
            _ => {
                return Err(format!(
                    "{number}: {line:?} is not followed by {SEPARATOR:?}"
                ))
            }
        }
        let mut expected = Vec::new();
        for (_, line) in lines.by_ref() {
            if line.trim().is_empty() {
                text.push_str(line);
                text.push('\n');
                break;
            }
            expected.push(line);
        }
        pieces.push(Piece::Block {
            command,
            expected: expected.join("\n"),
        });
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
# Adding.
add 1 2
----
3

# Options, and no output.
add 1 2 times=0
----

echo a b
----
a
b
";

    fn execute(command: &Command) -> Result<String, String> {
        match command.name.as_str() {
            "add" => {
                let sum: u64 = command.positional::<u64>()?.iter().sum();
                let times = command.option("times", 1)?;
                Ok(if times == 0 {
                    String::new()
                } else {
                    (sum * times).to_string()
                })
            }
            "echo" => Ok(command.args.join("\n")),
            other => Err(format!("unknown command {other}")),
        }
    }

    fn script(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("story.txt");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_script_whose_outputs_match_passes() {
        let (_dir, path) = script(SCRIPT);
        run(&path, execute);
    }

    #[test]
    fn a_changed_output_fails_naming_the_command_and_both_outputs() {
        let (_dir, path) = script(&SCRIPT.replace("3\n", "4\n"));
        let panic = std::panic::catch_unwind(|| run(&path, execute)).unwrap_err();
        let message = panic.downcast::<String>().unwrap();
        assert!(
            message.contains(":2: add 1 2\n--- expected\n4\n--- got\n3"),
            "{message}"
        );
    }

    #[test]
    fn updating_rewrites_only_the_outputs() {
        let (_dir, path) = script(&SCRIPT.replace("3\n", "4\n5\n").replace("a\nb\n", "a\n"));
        run_updating(&path, execute, true);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), SCRIPT);
        run(&path, execute);
    }

    #[test]
    fn rendering_a_script_with_its_own_outputs_gives_it_back() {
        let pieces = parse_script(SCRIPT).unwrap();
        assert_eq!(pieces.len(), 6, "{pieces:?}");
        let Piece::Block { command, expected } = &pieces[3] else {
            panic!("{pieces:?}")
        };
        assert_eq!(command.line, 7);
        assert_eq!(command.option("times", 1), Ok(0));
        assert_eq!(
            command.single::<u64>(),
            Err("add takes one argument".into())
        );
        assert_eq!(expected, "");
        assert!(parse_script("add 1\n3\n").unwrap_err().starts_with("1: "));
    }
}
