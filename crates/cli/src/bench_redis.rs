//! `leakbloom bench e2e --redis`: the same load against a Redis server with the RedisBloom
//! module, so that leakbloom is compared with its peer by one client, in one run, on the same
//! keys and with the same rules.
//!
//! Layout:
//! - [`commands`] encodes each request as a RESP2 command before the clock starts, from the same
//!   key buffers the leakbloom run sends: `BF.MEXISTS key k1..kn` for a check of `--batch` > 1
//!   keys, `BF.EXISTS` for one key, `BF.MADD` / `BF.ADD` for inserts. Each key is a 32-byte
//!   binary bulk string, exactly the bytes leakbloom gets.
//! - [`Connection`] is one TCP connection (TCP_NODELAY) that carries one request at a time:
//!   write the command, read until [`parse`] has one whole reply.
//! - [`parse`] reads one RESP2 reply from the start of a buffer, or says that more bytes are
//!   needed; [`expect`] checks that a reply is what the command asked for (one integer, or an
//!   array of `--batch` integers, each 0 or 1); anything else is an [`Error`] and counts as a
//!   failed request.
//! - [`probe`] asks `BF.INFO` about the key before anything is timed.
//!
//! Why one connection per request in flight: Redis answers a connection's commands one after
//! another, in order, so k requests pipelined on one connection are one request in service and
//! k - 1 queued behind it, whereas leakbloom's k HTTP/2 streams on a connection are served
//! independently. k connections with one request outstanding each is the honest equivalent of
//! `--concurrency k`: both servers have k requests in flight and neither client waits on its
//! own queue. (Redis serves every connection on its one main thread either way.)
//!
//! Caveats:
//! - The peer is one copy in memory; the scripts start it without persistence, so its inserts
//!   are neither replicated nor fsynced, where leakbloom's are (RF=3, fsync). Compare shapes,
//!   not guarantees: consistency does not apply to it, and the result line says
//!   `consistency=none route=none` and `conns=` the number of connections.
//! - `BF.MADD` and `BF.ADD` create a missing key with the module's defaults (100 keys at 1 %),
//!   so the probe checks that the key exists, to be made by `BF.RESERVE` with the size the
//!   comparison wants; this command never creates it.
//! - A connection whose request failed half-way (closed, cut off by the straggler timeout, or
//!   sent bytes that are not RESP2) is dropped and opened again by its next request, since
//!   its replies can no longer be matched to requests.

use std::fmt;
use std::io::{self, Write as _};

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use leakbloom_client::KEY_LEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench_e2e::Mode;

/// Room made in the read buffer before each read: a reply to 4096 keys is about 16 KiB, so
/// most replies arrive in one read.
const READ_CHUNK: usize = 64 * 1024;
/// Deepest nesting of arrays accepted: RedisBloom's replies are at most one array deep, so a
/// deeper one is a protocol error, not a reason to recurse without bound.
const MAX_DEPTH: usize = 4;
/// Largest bulk string or array accepted (Redis's own `proto-max-bulk-len` default, 512 MiB):
/// a larger length is a corrupt stream, not a buffer to wait for.
const MAX_LEN: usize = 512 * 1024 * 1024;

/// A failed Redis request.
#[derive(Debug)]
pub enum Error {
    /// The connection could not be opened, failed, or was closed by the server.
    Io(io::Error),
    /// Bytes that are not RESP2, or a reply of another shape than the command asks for.
    Protocol(String),
    /// An error reply from the server (or an error element of an array reply): its text.
    Server(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(error) => write!(f, "redis connection: {error}"),
            Error::Protocol(message) => write!(f, "redis protocol: {message}"),
            Error::Server(message) => write!(f, "redis replied: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// An error reply's text, cut before the arguments Redis quotes back for an unknown
    /// command (`..., with args beginning with: ...`): they would be keys, which are never
    /// printed.
    fn server(message: &str) -> Error {
        let cut = message
            .find(", with args beginning with")
            .unwrap_or(message.len());
        Error::Server(message[..cut].to_string())
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Io(error)
    }
}

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the server's error message.
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3 abc`, or `$-1` (None).
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`, or `*-1` (None).
    Array(Option<Vec<Reply>>),
}

/// `args` as one RESP2 command: an array of binary bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|arg| arg.len() + 16).sum::<usize>());
    header(&mut out, b'*', args.len());
    for arg in args {
        bulk(&mut out, arg);
    }
    out
}

/// The name of the command a request of `batch` keys sends in `mode`.
pub fn command_name(mode: Mode, batch: usize) -> &'static str {
    match (mode, batch) {
        (Mode::Check, 1) => "BF.EXISTS",
        (Mode::Check, _) => "BF.MEXISTS",
        (Mode::Insert, 1) => "BF.ADD",
        (Mode::Insert, _) => "BF.MADD",
    }
}

/// The commands of the run, one per buffer of packed 32-byte keys: `mode`'s command on the
/// bloom filter `key` with that buffer's keys, each its own bulk string. All are slices of one
/// allocation, like the key buffers.
pub fn commands(mode: Mode, key: &str, buffers: &[Bytes]) -> Vec<Bytes> {
    let mut all = Vec::new();
    let mut ends = Vec::with_capacity(buffers.len());
    for keys in buffers {
        command(&mut all, mode, key, keys);
        ends.push(all.len());
    }
    let all = Bytes::from(all);
    let starts = std::iter::once(0).chain(ends.iter().copied());
    starts
        .zip(&ends)
        .map(|(start, &end)| all.slice(start..end))
        .collect()
}

/// Appends one request's command to `out`.
fn command(out: &mut Vec<u8>, mode: Mode, key: &str, keys: &[u8]) {
    debug_assert_eq!(keys.len() % KEY_LEN, 0, "whole keys only");
    let count = keys.len() / KEY_LEN;
    header(out, b'*', 2 + count);
    bulk(out, command_name(mode, count).as_bytes());
    bulk(out, key.as_bytes());
    for key in keys.chunks_exact(KEY_LEN) {
        bulk(out, key);
    }
}

/// `*3\r\n` or `$32\r\n`: a kind byte, a length, CRLF.
fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}{len}\r\n", kind as char);
}

/// A binary bulk string: its length says where it ends, so any bytes may be in it.
fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Reads one reply from the start of `buf`: `Ok(Some((reply, length)))` once it is whole,
/// `Ok(None)` while more bytes are needed, an error if the bytes can never be one.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, Error> {
    parse_at(buf, 0, 0)
}

/// One reply starting at `at`, nested `depth` arrays deep: the reply and where it ends.
fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, Error> {
    let Some((line, next)) = line(buf, at) else {
        return Ok(None);
    };
    let (&kind, text) = line
        .split_first()
        .ok_or_else(|| Error::Protocol("an empty line where a reply starts".into()))?;
    let reply = match kind {
        b'+' => Reply::Simple(utf8(text)),
        b'-' => Reply::Error(utf8(text)),
        b':' => Reply::Integer(integer(text)?),
        b'$' => {
            let Some(len) = length(text)? else {
                return Ok(Some((Reply::Bulk(None), next)));
            };
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Error::Protocol(
                    "a bulk string longer than its length".into(),
                ));
            }
            return Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)));
        }
        b'*' => {
            let Some(len) = length(text)? else {
                return Ok(Some((Reply::Array(None), next)));
            };
            if depth == MAX_DEPTH {
                return Err(Error::Protocol(format!(
                    "arrays nested more than {MAX_DEPTH} deep"
                )));
            }
            // Every element takes at least 3 bytes: do not trust the length for capacity.
            let mut items = Vec::with_capacity(len.min((buf.len() - next) / 3));
            let mut end = next;
            for _ in 0..len {
                let Some((item, after)) = parse_at(buf, end, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                end = after;
            }
            return Ok(Some((Reply::Array(Some(items)), end)));
        }
        other => {
            return Err(Error::Protocol(format!(
                "a reply starting with byte {other:#04x}, not one of + - : $ *"
            )))
        }
    };
    Ok(Some((reply, next)))
}

/// The line starting at `at` without its CRLF, and where the next one starts; `None` until
/// the CRLF has arrived.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn utf8(text: &[u8]) -> String {
    String::from_utf8_lossy(text).into_owned()
}

fn integer(text: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("{:?} is not an integer", utf8(text))))
}

/// The length of a bulk string or array: `None` for the null one (-1).
fn length(text: &[u8]) -> Result<Option<usize>, Error> {
    match integer(text)? {
        -1 => Ok(None),
        len if (0..=MAX_LEN as i64).contains(&len) => Ok(Some(len as usize)),
        len => Err(Error::Protocol(format!(
            "length {len} is not -1 or 0..={MAX_LEN}"
        ))),
    }
}

/// Checks that `reply` answers a request of `batch` keys in `mode`: one integer 0 or 1 for a
/// single key, an array of `batch` of them otherwise. An error reply, or an error element in
/// the array (RedisBloom answers a full non-scaling filter so, per key), is a server error.
pub fn expect(mode: Mode, batch: usize, reply: &Reply) -> Result<(), Error> {
    let bit = |reply: &Reply| match reply {
        Reply::Integer(0 | 1) => Ok(()),
        Reply::Error(message) => Err(Error::server(message)),
        other => Err(Error::Protocol(format!(
            "{} answered {other:?} where 0 or 1 belongs",
            command_name(mode, batch)
        ))),
    };
    match reply {
        Reply::Array(Some(items)) if batch > 1 && items.len() == batch => {
            items.iter().try_for_each(bit)
        }
        Reply::Array(Some(items)) if batch > 1 => Err(Error::Protocol(format!(
            "{} answered {} items for {batch} keys",
            command_name(mode, batch),
            items.len()
        ))),
        other if batch == 1 => bit(other),
        Reply::Error(message) => Err(Error::server(message)),
        other => Err(Error::Protocol(format!(
            "{} answered {other:?}, not an array",
            command_name(mode, batch)
        ))),
    }
}

/// One TCP connection to Redis carrying one request at a time.
#[derive(Debug)]
pub struct Connection {
    addr: String,
    /// `None` after a request failed half-way: the next request opens a new connection.
    stream: Option<TcpStream>,
    /// The bytes of the reply being read.
    buffer: BytesMut,
}

impl Connection {
    /// Connects to `addr` (`host:port`, already checked to be loopback).
    pub async fn open(addr: &str) -> anyhow::Result<Connection> {
        let stream = connect(addr)
            .await
            .with_context(|| format!("cannot connect to Redis at {addr}"))?;
        Ok(Connection {
            addr: addr.to_string(),
            stream: Some(stream),
            buffer: BytesMut::with_capacity(READ_CHUNK),
        })
    }

    /// Sends one encoded command and reads its whole reply. An error reply is a reply; only a
    /// failed connection or bytes that are not RESP2 are errors here.
    pub async fn request(&mut self, command: &[u8]) -> Result<Reply, Error> {
        // Taken out while the request runs: if it fails or is cancelled half-way, the stream is
        // dropped with it and the next request starts on a fresh connection.
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => connect(&self.addr).await?,
        };
        stream.write_all(command).await?;
        self.buffer.clear();
        loop {
            if let Some((reply, length)) = parse(&self.buffer)? {
                if length != self.buffer.len() {
                    return Err(Error::Protocol(format!(
                        "{} bytes after the reply to the only request sent",
                        self.buffer.len() - length
                    )));
                }
                self.stream = Some(stream);
                return Ok(reply);
            }
            self.buffer.reserve(READ_CHUNK);
            if stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before replying",
                )));
            }
        }
    }
}

async fn connect(addr: &str) -> Result<TcpStream, Error> {
    let stream = TcpStream::connect(addr).await?;
    // Without it Nagle's algorithm holds small requests back for the previous reply's ACK.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Before the clock: `BF.INFO key`, so a server without RedisBloom or a missing key fails now
/// with what to do, instead of `BF.MADD` creating a default-sized filter.
pub async fn probe(conn: &mut Connection, key: &str, addr: &str) -> anyhow::Result<()> {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6379"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let reserve = format!(
        "create it first with `redis-cli -h {host} -p {port} BF.RESERVE {key} 1e-6 10000000` \
         (bench e2e never creates it)"
    );
    match conn.request(&encode(&[b"BF.INFO", key.as_bytes()])).await? {
        Reply::Array(Some(_)) => Ok(()),
        Reply::Error(message) if message.to_ascii_lowercase().contains("unknown command") => bail!(
            "the Redis server at {addr} has no RedisBloom module: start it with `redis-server \
             --loadmodule /path/to/redisbloom.so` (benches/scripts/vs-redisbloom.sh does); it \
             said: {message}"
        ),
        Reply::Error(message) if message.contains("not found") => {
            bail!("the Redis key {key:?} does not exist on {addr}: {reserve}; it said: {message}")
        }
        Reply::Error(message) if message.starts_with("WRONGTYPE") => bail!(
            "the Redis key {key:?} on {addr} is not a bloom filter: pick another --redis-key, \
             or delete it and {reserve}"
        ),
        other => bail!("BF.INFO {key:?} on {addr} answered {other:?}, not a bloom filter's info"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Reply {
        let (reply, length) = parse(bytes).unwrap().expect("a whole reply");
        assert_eq!(length, bytes.len(), "the whole buffer is one reply");
        reply
    }

    #[test]
    fn a_command_is_an_array_of_binary_bulk_strings() {
        assert_eq!(
            encode(&[b"BF.INFO", b"bench"]),
            b"*2\r\n$7\r\nBF.INFO\r\n$5\r\nbench\r\n"
        );
        // Key bytes go as they are, CR and LF included: the length, not a terminator, ends them.
        let keys: Vec<u8> = (0..64u8).map(|i| if i == 3 { b'\r' } else { i }).collect();
        let command = &commands(Mode::Check, "bench", &[Bytes::from(keys.clone())])[0];
        let mut expected = b"*4\r\n$10\r\nBF.MEXISTS\r\n$5\r\nbench\r\n$32\r\n".to_vec();
        expected.extend_from_slice(&keys[..32]);
        expected.extend_from_slice(b"\r\n$32\r\n");
        expected.extend_from_slice(&keys[32..]);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(&command[..], &expected[..]);
    }

    #[test]
    fn one_key_uses_the_single_key_commands() {
        for (mode, batch, name) in [
            (Mode::Check, 1, "BF.EXISTS"),
            (Mode::Check, 2, "BF.MEXISTS"),
            (Mode::Insert, 1, "BF.ADD"),
            (Mode::Insert, 4096, "BF.MADD"),
        ] {
            let mut command = Vec::new();
            super::command(&mut command, mode, "k", &vec![7; batch * KEY_LEN]);
            let (reply, _) = parse(&command).unwrap().unwrap();
            let Reply::Array(Some(args)) = reply else {
                panic!("{reply:?}")
            };
            assert_eq!(args.len(), 2 + batch);
            assert_eq!(args[0], Reply::Bulk(Some(name.as_bytes().to_vec())));
            assert_eq!(args[2], Reply::Bulk(Some(vec![7; KEY_LEN])));
        }
    }

    #[test]
    fn every_kind_of_reply_is_parsed() {
        assert_eq!(parsed(b"+OK\r\n"), Reply::Simple("OK".into()));
        assert_eq!(
            parsed(b"-ERR not found\r\n"),
            Reply::Error("ERR not found".into())
        );
        assert_eq!(parsed(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(parsed(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(parsed(b"$0\r\n\r\n"), Reply::Bulk(Some(vec![])));
        assert_eq!(
            parsed(b"$4\r\na\r\nb\r\n"),
            Reply::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(parsed(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(parsed(b"*0\r\n"), Reply::Array(Some(vec![])));
        assert_eq!(
            parsed(b"*3\r\n:1\r\n-ERR full\r\n*1\r\n+x\r\n"),
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Error("ERR full".into()),
                Reply::Array(Some(vec![Reply::Simple("x".into())])),
            ]))
        );
    }

    #[test]
    fn a_reply_split_across_reads_is_parsed_once_whole() {
        let whole = b"*3\r\n:1\r\n$5\r\nhello\r\n:0\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            parsed(whole),
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Bulk(Some(b"hello".to_vec())),
                Reply::Integer(0),
            ]))
        );
    }

    #[test]
    fn a_reply_followed_by_more_bytes_says_where_it_ends() {
        let (reply, length) = parse(b":1\r\n:2\r\n").unwrap().unwrap();
        assert_eq!((reply, length), (Reply::Integer(1), 4));
    }

    #[test]
    fn bytes_that_are_not_resp2_are_refused_at_once() {
        for bad in [
            &b"?\r\n"[..],
            b"\r\n",
            b":12x\r\n",
            b"$-2\r\n",
            b"$99999999999\r\n",
            b"$3\r\nabcd\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_huge_array_length_does_not_reserve_memory_before_its_items_arrive() {
        assert_eq!(parse(b"*536870912\r\n:1\r\n").unwrap(), None);
    }

    #[test]
    fn a_batch_reply_must_be_one_bit_per_key() {
        let bits = |n: usize| Reply::Array(Some(vec![Reply::Integer(1); n]));
        assert!(expect(Mode::Check, 3, &bits(3)).is_ok());
        assert!(expect(Mode::Insert, 1, &Reply::Integer(0)).is_ok());
        assert!(matches!(
            expect(Mode::Check, 3, &bits(2)),
            Err(Error::Protocol(message)) if message.contains("2 items for 3 keys")
        ));
        assert!(matches!(
            expect(Mode::Check, 1, &bits(1)),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            expect(
                Mode::Check,
                2,
                &Reply::Array(Some(vec![Reply::Integer(2), Reply::Integer(0)]))
            ),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn an_error_reply_or_element_is_the_servers_error() {
        let full = Reply::Error("ERR non scaling filter is full".into());
        assert!(matches!(
            expect(Mode::Insert, 2, &Reply::Array(Some(vec![Reply::Integer(1), full.clone()]))),
            Err(Error::Server(message)) if message.contains("full")
        ));
        assert!(matches!(
            expect(Mode::Insert, 1, &full),
            Err(Error::Server(_))
        ));
        assert!(matches!(
            expect(Mode::Check, 8, &Reply::Error("WRONGTYPE".into())),
            Err(Error::Server(_))
        ));
    }

    #[test]
    fn the_arguments_redis_quotes_back_are_never_kept() {
        let unknown = Reply::Error(
            "ERR unknown command 'BF.MADD', with args beginning with: 'bench' '\x01\x02' ".into(),
        );
        let Err(Error::Server(message)) = expect(Mode::Insert, 2, &unknown) else {
            panic!("an error reply is the server's error")
        };
        assert_eq!(message, "ERR unknown command 'BF.MADD'");
    }

    #[test]
    fn each_command_carries_the_keys_of_its_own_buffer() {
        let buffers = [
            Bytes::from(vec![1; 2 * KEY_LEN]),
            Bytes::from(vec![2; 2 * KEY_LEN]),
        ];
        let commands = commands(Mode::Insert, "bench", &buffers);
        assert_eq!(commands.len(), 2);
        for (command, byte) in commands.iter().zip([1, 2]) {
            let (reply, length) = parse(command).unwrap().unwrap();
            assert_eq!(length, command.len());
            let Reply::Array(Some(args)) = reply else {
                panic!("{reply:?}")
            };
            assert_eq!(args[0], Reply::Bulk(Some(b"BF.MADD".to_vec())));
            assert_eq!(args[1], Reply::Bulk(Some(b"bench".to_vec())));
            assert_eq!(
                args[2..],
                [
                    Reply::Bulk(Some(vec![byte; KEY_LEN])),
                    Reply::Bulk(Some(vec![byte; KEY_LEN]))
                ]
            );
        }
    }
}
