//! The two pieces of the SSH wire the filtered agent needs, parsed without
//! I/O: the server's host key from the clear-text start of a connection
//! ([`HostKeyWatch`], RFC 4253 §4.2, §6, §8 and RFC 5656 §4), and the data
//! a client asks the agent to sign for a login ([`Userauth`], RFC 4252 §7,
//! OpenSSH PROTOCOL `publickey-hostbound-v00@openssh.com`).

/// `SSH_MSG_NEWKEYS`: from here on the stream is encrypted.
const MSG_NEWKEYS: u8 = 21;
/// `SSH_MSG_KEXDH_REPLY`, `SSH_MSG_KEX_ECDH_REPLY` (and the PQ hybrids), but
/// also `SSH_MSG_KEX_DH_GEX_GROUP`, which carries no host key.
const MSG_KEX_REPLY: u8 = 31;
/// `SSH_MSG_KEX_DH_GEX_REPLY`.
const MSG_KEX_GEX_REPLY: u8 = 33;
/// `SSH_MSG_USERAUTH_REQUEST`.
const MSG_USERAUTH_REQUEST: u8 = 50;
/// RFC 4253 §6.1: implementations must handle packets of this size; none
/// before the key exchange is larger.
const MAX_PACKET: usize = 35_000;
/// What is read before giving up on finding a host key: the banner lines,
/// KEXINIT and the reply fit in a few kilobytes.
const MAX_WATCHED: usize = 256 * 1024;
/// RFC 4253 §4.2: the identification line is at most 255 bytes; lines the
/// server sends before it are bounded by [`MAX_WATCHED`] as a whole.
const MAX_LINE: usize = 8 * 1024;

/// What the watch found after the bytes fed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    /// Nothing yet: feed more.
    More,
    /// The server's host key blob (an SSH public key, as in `known_hosts`
    /// base64-decoded). The watch is over.
    HostKey(Vec<u8>),
    /// No host key will come (encrypted now, not SSH, or over a limit).
    Over,
}

/// Follows the server-to-client bytes of an SSH connection until the key
/// exchange reply names the server's host key.
#[derive(Debug, Default)]
pub struct HostKeyWatch {
    buf: Vec<u8>,
    /// Where parsing resumes in `buf`.
    at: usize,
    /// Past the identification line (`SSH-2.0-…`).
    banner_seen: bool,
    done: bool,
}

impl HostKeyWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next bytes the server sent.
    pub fn feed(&mut self, bytes: &[u8]) -> Watch {
        if self.done {
            return Watch::Over;
        }
        // At most MAX_WATCHED bytes are ever looked at, however they arrive.
        let room = MAX_WATCHED - self.buf.len();
        let cut = bytes.len() > room;
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let verdict = match self.parse() {
            Watch::More if cut || self.buf.len() == MAX_WATCHED => Watch::Over,
            v => v,
        };
        if verdict != Watch::More {
            self.done = true;
            self.buf = Vec::new();
        }
        verdict
    }

    fn parse(&mut self) -> Watch {
        while !self.banner_seen {
            let rest = &self.buf[self.at..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                return if rest.len() > MAX_LINE {
                    Watch::Over
                } else {
                    Watch::More
                };
            };
            if end > MAX_LINE {
                return Watch::Over;
            }
            // Lines before the identification are allowed (RFC 4253 §4.2);
            // only "SSH-2.0-" (or the 1.99 compatibility form) goes on.
            let line = &rest[..end];
            if line.starts_with(b"SSH-") {
                if !(line.starts_with(b"SSH-2.0-") || line.starts_with(b"SSH-1.99-")) {
                    return Watch::Over;
                }
                self.banner_seen = true;
            }
            self.at += end + 1;
        }
        loop {
            let rest = &self.buf[self.at..];
            let Some(len) = rest.get(..4) else {
                return Watch::More;
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if !(5..=MAX_PACKET).contains(&len) {
                return Watch::Over;
            }
            let Some(packet) = rest.get(4..4 + len) else {
                return Watch::More;
            };
            let padding = packet[0] as usize;
            if padding + 1 > len {
                return Watch::Over;
            }
            let payload = &packet[1..len - padding];
            match payload.first() {
                Some(&MSG_NEWKEYS) => return Watch::Over,
                Some(&MSG_KEX_GEX_REPLY) => {
                    return match string(&payload[1..]) {
                        Some((key, _)) if is_key_blob(key) => Watch::HostKey(key.to_vec()),
                        _ => Watch::Over,
                    };
                }
                // A Diffie-Hellman group (GEX) starts with an mpint, not a key.
                Some(&MSG_KEX_REPLY) => {
                    if let Some((key, _)) = string(&payload[1..])
                        && is_key_blob(key)
                    {
                        return Watch::HostKey(key.to_vec());
                    }
                }
                _ => {}
            }
            self.at += 4 + len;
        }
    }
}

/// Whether `blob` is exactly one SSH public key.
fn is_key_blob(blob: &[u8]) -> bool {
    use ssh_encoding::Decode as _;
    let mut reader = blob;
    ssh_key::public::KeyData::decode(&mut reader).is_ok() && reader.is_empty()
}

/// An SSH `string`: (its bytes, what follows).
fn string(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let body = buf.get(4..4usize.checked_add(len)?)?;
    Some((body, &buf[4 + len..]))
}

/// The data a client signs to log in with a public key.
#[derive(Debug, PartialEq, Eq)]
pub struct Userauth<'a> {
    /// The connection's session identifier (its first exchange hash).
    pub session_id: &'a [u8],
    pub user: &'a [u8],
    /// The public key blob being proved.
    pub key: &'a [u8],
    /// `publickey-hostbound-v00@openssh.com`: the server host key the client
    /// binds the signature to.
    pub host_key: Option<&'a [u8]>,
}

/// `data` as a public-key `SSH_MSG_USERAUTH_REQUEST` signature payload
/// (`string session_id, byte 50, string user, string service, string
/// "publickey" or "publickey-hostbound-v00@openssh.com", bool TRUE, string
/// algorithm, string key[, string host key]`), nothing after it; `None`
/// for anything else (an SSHSIG file signature, arbitrary bytes).
pub fn userauth(data: &[u8]) -> Option<Userauth<'_>> {
    let (session_id, rest) = string(data)?;
    let (&msg, rest) = rest.split_first()?;
    if msg != MSG_USERAUTH_REQUEST || session_id.is_empty() {
        return None;
    }
    let (user, rest) = string(rest)?;
    let (service, rest) = string(rest)?;
    let (method, rest) = string(rest)?;
    let hostbound = match method {
        b"publickey" => false,
        b"publickey-hostbound-v00@openssh.com" => true,
        _ => return None,
    };
    let (&has_signature, rest) = rest.split_first()?;
    if service != b"ssh-connection" || has_signature != 1 {
        return None;
    }
    let (_algorithm, rest) = string(rest)?;
    let (key, rest) = string(rest)?;
    let (host_key, rest) = match hostbound {
        true => {
            let (h, rest) = string(rest)?;
            (Some(h), rest)
        }
        false => (None, rest),
    };
    rest.is_empty().then_some(Userauth {
        session_id,
        user,
        key,
        host_key,
    })
}

/// For `fuzz/fuzz_targets/ssh_wire.rs` and the seed replay test.
pub mod fuzzing {
    use super::*;

    /// Any bytes: no panic; the watch's verdict does not depend on how the
    /// stream is cut (the first byte picks the chunk size), and a host key
    /// it returns is a public key; a login payload it reads names parts of
    /// the input.
    pub fn fuzz_check(data: &[u8]) {
        let whole = HostKeyWatch::new().feed(data);
        let chunk = data.first().map_or(1, |&b| usize::from(b).max(1));
        let mut watch = HostKeyWatch::new();
        let mut chunked = Watch::More;
        for piece in data.chunks(chunk) {
            chunked = watch.feed(piece);
            if chunked != Watch::More {
                break;
            }
        }
        assert_eq!(whole, chunked, "chunks of {chunk}");
        if let Watch::HostKey(key) = &whole {
            assert!(is_key_blob(key));
        }
        if let Some(login) = userauth(data) {
            assert!(!login.session_id.is_empty());
            assert!(login.key.len() < data.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_seeds_ssh_wire() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/ssh_wire");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            fuzzing::fuzz_check(&data);
            for len in 0..data.len().min(4096) {
                fuzzing::fuzz_check(&data[..len]);
            }
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} seeds in {dir}");
    }

    /// The first bytes a real OpenSSH 9.2 sshd sent (sntrup761x25519 key
    /// exchange, captured for the seed corpus) name its host key.
    #[test]
    fn reads_the_host_key_a_real_sshd_sent() {
        use base64::Engine as _;
        let stream = include_bytes!("../../../fuzz/corpus/ssh_wire/openssh_9.2_server_start");
        let host_key = base64::engine::general_purpose::STANDARD
            .decode("AAAAC3NzaC1lZDI1NTE5AAAAIMUupG9fU2X/NZFSBTSYcXcinm20Nmimbh0oNNsv0ztu")
            .unwrap();
        assert_eq!(HostKeyWatch::new().feed(stream), Watch::HostKey(host_key));
    }

    fn put_string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// An unencrypted binary packet around `payload` (4 bytes of padding).
    fn packet(payload: &[u8]) -> Vec<u8> {
        let padding = 4;
        let len = payload.len() + padding + 1;
        let mut out = (len as u32).to_be_bytes().to_vec();
        out.push(padding as u8);
        out.extend_from_slice(payload);
        out.extend_from_slice(&[0; 4]);
        out
    }

    /// An ed25519 public key blob.
    fn key_blob(seed: u8) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, b"ssh-ed25519");
        put_string(&mut out, &[seed; 32]);
        out
    }

    fn kex_reply(msg: u8, key: &[u8]) -> Vec<u8> {
        let mut payload = vec![msg];
        put_string(&mut payload, key);
        put_string(&mut payload, &[7; 32]); // the server's ephemeral key
        put_string(&mut payload, b"signature");
        packet(&payload)
    }

    fn server_stream(reply: &[u8]) -> Vec<u8> {
        let mut s = b"a greeting line\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec();
        s.extend(packet(&[20; 40])); // KEXINIT
        s.extend_from_slice(reply);
        s
    }

    #[test]
    fn finds_the_host_key_of_an_ecdh_reply_fed_byte_by_byte() {
        let stream = server_stream(&kex_reply(MSG_KEX_REPLY, &key_blob(1)));
        let mut watch = HostKeyWatch::new();
        let mut verdicts: Vec<Watch> = stream.iter().map(|b| watch.feed(&[*b])).collect();
        assert_eq!(verdicts.pop(), Some(Watch::HostKey(key_blob(1))));
        assert!(verdicts.iter().all(|v| *v == Watch::More), "{verdicts:?}");
        assert_eq!(watch.feed(b"more"), Watch::Over);
    }

    #[test]
    fn skips_a_gex_group_and_takes_the_gex_reply() {
        let mut group = vec![MSG_KEX_REPLY];
        put_string(&mut group, &[0x00, 0xff, 0xfe, 0x01]); // mpint p
        put_string(&mut group, &[2]); // mpint g
        let mut stream = server_stream(&packet(&group));
        stream.extend(kex_reply(MSG_KEX_GEX_REPLY, &key_blob(2)));
        assert_eq!(
            HostKeyWatch::new().feed(&stream),
            Watch::HostKey(key_blob(2))
        );
    }

    #[test]
    fn gives_up_on_what_is_not_a_clear_ssh_key_exchange() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("ssh 1", b"SSH-1.5-old\r\n".to_vec()),
            ("newkeys first", server_stream(&packet(&[MSG_NEWKEYS]))),
            ("a huge packet", {
                let mut s = b"SSH-2.0-x\r\n".to_vec();
                s.extend_from_slice(&(1u32 << 20).to_be_bytes());
                s
            }),
            ("padding past the end", {
                let mut s = b"SSH-2.0-x\r\n".to_vec();
                s.extend_from_slice(&[0, 0, 0, 5, 9, 1, 2, 3, 4]);
                s
            }),
            ("a reply key that is no key", {
                server_stream(&kex_reply(MSG_KEX_GEX_REPLY, b"not a key"))
            }),
            ("an endless line", vec![b'x'; MAX_LINE + 2]),
        ];
        for (what, stream) in cases {
            assert_eq!(HostKeyWatch::new().feed(&stream), Watch::Over, "{what}");
        }
        let mut watch = HostKeyWatch::new();
        let chunk = [b'x'; 1000];
        let mut verdict = Watch::More;
        for _ in 0..MAX_WATCHED / 1000 + 1 {
            verdict = watch.feed(&chunk);
            if verdict != Watch::More {
                break;
            }
        }
        assert_eq!(verdict, Watch::Over, "a stream without newline");
    }

    fn userauth_data(method: &[u8], host_key: Option<&[u8]>) -> Vec<u8> {
        let mut d = Vec::new();
        put_string(&mut d, b"session-id-hash");
        d.push(MSG_USERAUTH_REQUEST);
        put_string(&mut d, b"git");
        put_string(&mut d, b"ssh-connection");
        put_string(&mut d, method);
        d.push(1);
        put_string(&mut d, b"ssh-ed25519");
        put_string(&mut d, &key_blob(3));
        if let Some(h) = host_key {
            put_string(&mut d, h);
        }
        d
    }

    #[test]
    fn reads_a_login_signature_payload_plain_and_hostbound() {
        let plain = userauth_data(b"publickey", None);
        let parsed = userauth(&plain).unwrap();
        assert_eq!(parsed.session_id, b"session-id-hash");
        assert_eq!(parsed.user, b"git");
        assert_eq!(parsed.key, key_blob(3).as_slice());
        assert_eq!(parsed.host_key, None);
        let host = key_blob(4);
        let bound = userauth_data(b"publickey-hostbound-v00@openssh.com", Some(&host));
        assert_eq!(userauth(&bound).unwrap().host_key, Some(host.as_slice()));
    }

    #[test]
    fn refuses_anything_else_to_sign() {
        let mut trailing = userauth_data(b"publickey", None);
        trailing.push(0);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("sshsig", b"SSHSIG\0\0\0\x04file".to_vec()),
            ("other method", userauth_data(b"password", None)),
            ("hostbound without host key", {
                userauth_data(b"publickey-hostbound-v00@openssh.com", None)
            }),
            ("trailing bytes", trailing),
            ("empty", Vec::new()),
        ];
        for (what, data) in cases {
            assert_eq!(userauth(&data), None, "{what}");
        }
    }
}
