//! Moat's DNS for the sandbox: answered locally, never forwarded.
//!
//! Every A query gets a synthetic IPv4 address from 198.18.0.0/15 bound to the
//! queried name for the whole run (same name → same address, different names →
//! different addresses); AAAA and every other type get NODATA (NOERROR, no
//! answer), HTTPS/SVCB included so clients fall back to A. The original
//! destination of any TCP connection therefore names its host
//! ([`SyntheticDns::name_for`]), and DNS cannot carry data out of the sandbox.
//!
//! Wire format: `simple-dns` (small, maintained, builds on stable, its only
//! dependency `bitflags` already in the tree), chosen over `hickory-proto`,
//! which pulls in far more for the handful of records needed here; query types
//! it does not know are answered NODATA by a tiny raw fallback.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use simple_dns::rdata::{A, PTR, RData};
use simple_dns::{
    CLASS, Name, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, RCODE, ResourceRecord, TYPE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// TTL of every synthetic answer, in seconds.
const TTL: u32 = 60;
/// First address of the pool (198.18.0.1).
const POOL_FIRST: u32 = u32::from_be_bytes([198, 18, 0, 1]);
/// Last address of the pool (198.19.255.254).
const POOL_LAST: u32 = u32::from_be_bytes([198, 19, 255, 254]);
/// Largest DNS message accepted over TCP (and read over UDP).
const MAX_MESSAGE: usize = 4096;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many TCP connections are served at once; more are dropped.
const MAX_TCP_CONNECTIONS: usize = 256;
/// Longest domain name in presentation form, without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// Observer of answered questions: (name, qtype, answer address if any).
pub type ObserverFn = dyn Fn(&str, &str, Option<Ipv4Addr>) + Send + Sync;

type Observer = Arc<ObserverFn>;

#[derive(Default)]
struct Table {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Next candidate address (as u32); may point at a .0/.255 or past the end.
    cursor: u32,
}

/// Name ↔ synthetic address table plus the DNS responder. Cheap to share (Arc), thread-safe.
pub struct SyntheticDns {
    table: Mutex<Table>,
    observer: RwLock<Option<Observer>>,
}

impl Default for SyntheticDns {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SyntheticDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.table.lock().map(|t| t.by_name.len()).unwrap_or(0);
        f.debug_struct("SyntheticDns")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

/// Next usable pool address at or after `*cursor`, advancing the cursor past
/// it; `None` once the pool (198.18.0.1 ..= 198.19.255.254, no .0/.255) is spent.
fn allocate(cursor: &mut u32) -> Option<Ipv4Addr> {
    let mut candidate = (*cursor).max(POOL_FIRST);
    loop {
        if candidate > POOL_LAST {
            *cursor = candidate;
            return None;
        }
        let last = candidate & 0xff;
        if last != 0 && last != 255 {
            *cursor = candidate + 1;
            return Some(Ipv4Addr::from(candidate));
        }
        candidate += 1;
    }
}

fn in_pool(ip: Ipv4Addr) -> bool {
    (POOL_FIRST..=POOL_LAST).contains(&u32::from(ip))
}

fn valid_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && label
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

/// Lowercase, drop one trailing dot, validate (1..=253 chars, labels 1..=63 of
/// `[a-z0-9-_]`).
fn normalize(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME {
        return None;
    }
    if !trimmed.split('.').all(|l| valid_label(l.as_bytes())) {
        return None;
    }
    Some(trimmed.to_owned())
}

/// The name of wire labels, normalized, or `None` when a label holds anything
/// but `[A-Za-z0-9-_]` (a dot inside a label included).
fn name_from_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let mut out = String::new();
    for label in labels {
        let lower = label.to_ascii_lowercase();
        if !valid_label(&lower) {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(std::str::from_utf8(&lower).ok()?);
    }
    normalize(&out)
}

fn is_localhost(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// `d.c.b.a.in-addr.arpa` → a.b.c.d.
fn parse_reverse(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = rest.split('.');
    for slot in octets.iter_mut().rev() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.starts_with('0')) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

fn qtype_label(qtype: QTYPE) -> String {
    match qtype {
        QTYPE::TYPE(TYPE::Unknown(n)) => format!("TYPE{n}"),
        QTYPE::TYPE(t) => format!("{t:?}"),
        QTYPE::IXFR => "IXFR".into(),
        QTYPE::AXFR => "AXFR".into(),
        QTYPE::MAILB => "MAILB".into(),
        QTYPE::MAILA => "MAILA".into(),
        QTYPE::ANY => "ANY".into(),
    }
}

/// What to put in a response.
enum Outcome {
    Address(Ipv4Addr),
    Pointer(String),
    NoData,
    Refused,
}

impl SyntheticDns {
    /// An empty table allocating from 198.18.0.1 upward.
    pub fn new() -> Self {
        Self {
            table: Mutex::new(Table {
                cursor: POOL_FIRST,
                ..Table::default()
            }),
            observer: RwLock::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding the lock; recover from poisoning anyway.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synthetic address of `name` (allocated on first use). `None` when
    /// the name is invalid or the pool is exhausted.
    pub fn address_for(&self, name: &str) -> Option<Ipv4Addr> {
        let name = normalize(name)?;
        self.address_for_normalized(name)
    }

    fn address_for_normalized(&self, name: String) -> Option<Ipv4Addr> {
        let mut table = self.lock();
        if let Some(ip) = table.by_name.get(&name) {
            return Some(*ip);
        }
        let ip = allocate(&mut table.cursor)?;
        table.by_addr.insert(ip, name.clone());
        table.by_name.insert(name, ip);
        Some(ip)
    }

    /// The name a synthetic address was handed out for (IPv4-mapped IPv6 accepted).
    pub fn name_for(&self, ip: IpAddr) -> Option<String> {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
        };
        if !in_pool(v4) {
            return None;
        }
        self.lock().by_addr.get(&v4).cloned()
    }

    /// Called for each answered question with (name, qtype such as `"A"`,
    /// answer address if any). Replaces any previous observer.
    pub fn set_observer(&self, f: Box<ObserverFn>) {
        let mut slot = self.observer.write().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::from(f));
    }

    fn notify(&self, name: &str, qtype: &str, ip: Option<Ipv4Addr>) {
        let observer = self
            .observer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(observer) = observer {
            observer(name, qtype, ip);
        }
    }

    fn resolve(&self, name: Option<String>, qtype: QTYPE, qclass: QCLASS) -> Outcome {
        let class_ok = matches!(qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY);
        match qtype {
            QTYPE::TYPE(TYPE::A) if class_ok => match name {
                Some(n) if is_localhost(&n) => Outcome::Address(Ipv4Addr::LOCALHOST),
                Some(n) => self
                    .address_for_normalized(n)
                    .map_or(Outcome::Refused, Outcome::Address),
                None => Outcome::Refused,
            },
            QTYPE::TYPE(TYPE::PTR) if class_ok => name
                .as_deref()
                .and_then(parse_reverse)
                .and_then(|ip| self.name_for(IpAddr::V4(ip)))
                .map_or(Outcome::NoData, Outcome::Pointer),
            _ => Outcome::NoData,
        }
    }

    /// Answer one DNS message (UDP payload). None = drop silently (malformed,
    /// not a query, QR bit set, no question, >1 question, opcode != QUERY).
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        // Cheap header checks first, so that hostile section counts never
        // reach the parser (which preallocates per announced record).
        let header = query.get(..12)?;
        let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
        if header[2] & 0x80 != 0 || count(4) != 1 {
            return None;
        }
        // Each further record takes at least 11 bytes (root name, type, class, TTL, rdlength).
        if (count(6) + count(8) + count(10)) * 11 > query.len() {
            return None;
        }
        let packet = match Packet::parse(query) {
            Ok(p) => p,
            Err(simple_dns::SimpleDnsError::InvalidQType(_)) => {
                return self.answer_unknown_type(query);
            }
            Err(_) => return None,
        };
        if packet.has_flags(PacketFlag::RESPONSE)
            || packet.opcode() != OPCODE::StandardQuery
            || packet.questions.len() != 1
        {
            return None;
        }
        let question = &packet.questions[0];
        let name = name_from_labels(question.qname.get_labels().iter().map(|l| l.as_ref()));
        let outcome = self.resolve(name.clone(), question.qtype, question.qclass);

        let mut reply = Packet::new_reply(packet.id());
        *reply.opcode_mut() = OPCODE::StandardQuery;
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if packet.has_flags(PacketFlag::RECURSION_DESIRED) {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        reply.questions.push(question.clone());
        let ptr_target;
        let answered_ip = match &outcome {
            Outcome::Address(ip) => {
                reply.answers.push(ResourceRecord::new(
                    question.qname.clone(),
                    CLASS::IN,
                    TTL,
                    RData::A(A::from(*ip)),
                ));
                Some(*ip)
            }
            Outcome::Pointer(target) => {
                ptr_target = target.clone();
                let target = Name::new(&ptr_target).ok()?;
                reply.answers.push(ResourceRecord::new(
                    question.qname.clone(),
                    CLASS::IN,
                    TTL,
                    RData::PTR(PTR(target)),
                ));
                None
            }
            Outcome::NoData => None,
            Outcome::Refused => {
                *reply.rcode_mut() = RCODE::Refused;
                None
            }
        };
        let bytes = reply.build_bytes_vec_compressed().ok()?;
        let shown = name.unwrap_or_else(|| question.qname.to_string());
        self.notify(&shown, &qtype_label(question.qtype), answered_ip);
        Some(bytes)
    }

    /// NODATA for a query whose type `simple-dns` cannot represent (it rejects
    /// the whole message); header and question are checked and echoed raw.
    fn answer_unknown_type(&self, query: &[u8]) -> Option<Vec<u8>> {
        let header = query.get(..12)?;
        let flags = u16::from_be_bytes([header[2], header[3]]);
        let qdcount = u16::from_be_bytes([header[4], header[5]]);
        // QR clear, opcode QUERY, Z clear, exactly one question.
        if flags & 0x8000 != 0 || flags & 0x7800 != 0 || flags & 0x0040 != 0 || qdcount != 1 {
            return None;
        }
        let mut pos = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*query.get(pos)?);
            pos += 1;
            if len == 0 {
                break;
            }
            if len > MAX_LABEL {
                return None; // compression pointers or reserved label types
            }
            labels.push(query.get(pos..pos + len)?);
            pos += len;
            if pos - 12 > 255 {
                return None;
            }
        }
        let fixed = query.get(pos..pos + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let question = &query[12..pos + 4];

        let mut out = Vec::with_capacity(12 + question.len());
        out.extend_from_slice(&header[..2]);
        out.extend_from_slice(&(0x8080 | (flags & 0x0100)).to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(question);

        let shown = name_from_labels(labels.iter().copied()).unwrap_or_else(|| {
            labels
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
                .join(".")
        });
        self.notify(&shown, &format!("TYPE{qtype}"), None);
        Some(out)
    }

    /// [`answer`](Self::answer), with any panic in the wire parser turned into a drop.
    fn answer_guarded(&self, query: &[u8]) -> Option<Vec<u8>> {
        catch_unwind(AssertUnwindSafe(|| self.answer(query))).unwrap_or(None)
    }
}

/// Serve DNS over UDP on `socket` forever. Bad input is dropped; socket errors
/// are logged and the loop goes on.
pub async fn serve_udp(socket: UdpSocket, dns: Arc<SyntheticDns>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("dns udp recv: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(reply) = dns.answer_guarded(&buf[..len])
            && let Err(e) = socket.send_to(&reply, peer).await
        {
            tracing::debug!("dns udp send to {peer}: {e}");
        }
    }
}

/// Serve DNS over TCP (RFC 7766: 2-byte length prefix, several queries per
/// connection, idle timeout 10 s, messages up to 4096 bytes) forever.
pub async fn serve_tcp(listener: TcpListener, dns: Arc<SyntheticDns>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("dns tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("dns tcp: too many connections, dropping {peer}");
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_tcp_connection(stream, &dns).await {
                tracing::debug!("dns tcp {peer}: {e}");
            }
        });
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, dns: &SyntheticDns) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Err(_) => return Ok(()), // idle
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => usize::from(r?),
        };
        if len == 0 || len > MAX_MESSAGE {
            return Ok(());
        }
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len])).await {
            Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        let Some(reply) = dns.answer_guarded(&buf[..len]) else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(2 + reply.len());
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        match tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await {
            Err(_) => return Ok(()),
            Ok(r) => r?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn query_raw(id: u16, name: &str, qtype: QTYPE) -> Vec<u8> {
        let mut p = Packet::new_query(id);
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        p.questions.push(simple_dns::Question::new(
            Name::new(name).unwrap(),
            qtype,
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        p.build_bytes_vec().unwrap()
    }

    fn query(name: &str, ty: TYPE) -> Vec<u8> {
        query_raw(0x1234, name, QTYPE::TYPE(ty))
    }

    fn a_of(reply: &Packet<'_>) -> Vec<Ipv4Addr> {
        reply
            .answers
            .iter()
            .filter_map(|rr| match &rr.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .collect()
    }

    fn resolve_a(dns: &SyntheticDns, name: &str) -> Ipv4Addr {
        let bytes = dns.answer(&query(name, TYPE::A)).expect("answer");
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!(reply.rcode(), RCODE::NoError);
        let a = a_of(&reply);
        assert_eq!(a.len(), 1);
        assert_eq!(reply.answers[0].ttl, TTL);
        a[0]
    }

    fn assert_nodata(dns: &SyntheticDns, bytes: &[u8]) {
        let out = dns.answer(bytes).expect("answer");
        let reply = Packet::parse(&out).unwrap();
        assert_eq!(reply.rcode(), RCODE::NoError);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.questions.len(), 1);
        assert!(reply.has_flags(PacketFlag::RESPONSE));
    }

    #[test]
    fn a_records_distinct_stable_in_range_and_reversible() {
        let dns = SyntheticDns::new();
        let a = resolve_a(&dns, "api.github.com");
        let b = resolve_a(&dns, "example.org");
        assert_ne!(a, b);
        assert!(in_pool(a) && in_pool(b));
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(resolve_a(&dns, "api.github.com"), a);
        assert_eq!(dns.address_for("example.org"), Some(b));
        assert_eq!(
            dns.name_for(IpAddr::V4(a)).as_deref(),
            Some("api.github.com")
        );
        assert_eq!(
            dns.name_for(IpAddr::V6(b.to_ipv6_mapped())).as_deref(),
            Some("example.org")
        );
        assert_eq!(dns.name_for("198.18.9.9".parse().unwrap()), None);
        assert_eq!(dns.name_for("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn reply_echoes_header_and_question() {
        let dns = SyntheticDns::new();
        let q = query_raw(0xbeef, "Example.COM", QTYPE::TYPE(TYPE::A));
        let out = dns.answer(&q).unwrap();
        let reply = Packet::parse(&out).unwrap();
        assert_eq!(reply.id(), 0xbeef);
        assert!(reply.has_flags(PacketFlag::RESPONSE));
        assert!(reply.has_flags(PacketFlag::RECURSION_AVAILABLE));
        assert!(reply.has_flags(PacketFlag::RECURSION_DESIRED));
        assert_eq!(reply.opcode(), OPCODE::StandardQuery);
        // Question echoed byte for byte (0x20 case randomisation preserved).
        assert_eq!(reply.questions[0].qname.to_string(), "Example.COM");
        assert_eq!(reply.questions[0].qtype, QTYPE::TYPE(TYPE::A));

        let mut no_rd = Packet::new_query(7);
        no_rd.questions.push(simple_dns::Question::new(
            Name::new("x.com").unwrap(),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let out = dns.answer(&no_rd.build_bytes_vec().unwrap()).unwrap();
        assert!(
            !Packet::parse(&out)
                .unwrap()
                .has_flags(PacketFlag::RECURSION_DESIRED)
        );
    }

    #[test]
    fn aaaa_https_and_others_are_nodata() {
        let dns = SyntheticDns::new();
        for ty in [
            TYPE::AAAA,
            TYPE::HTTPS,
            TYPE::SVCB,
            TYPE::MX,
            TYPE::TXT,
            TYPE::SRV,
        ] {
            assert_nodata(&dns, &query("api.github.com", ty));
        }
        assert_nodata(&dns, &query_raw(1, "api.github.com", QTYPE::ANY));
        // HTTPS is type 65 on the wire.
        let q = query("api.github.com", TYPE::HTTPS);
        assert_eq!(&q[q.len() - 4..q.len() - 2], &[0, 65]);
        // NODATA queries allocate nothing.
        assert_eq!(
            dns.address_for("api.github.com"),
            Some(Ipv4Addr::new(198, 18, 0, 1))
        );
    }

    #[test]
    fn unknown_qtype_is_nodata() {
        let dns = SyntheticDns::new();
        let mut q = query("example.com", TYPE::A);
        let n = q.len();
        q[n - 4..n - 2].copy_from_slice(&4242u16.to_be_bytes());
        let out = dns.answer(&q).expect("answer");
        assert_eq!(&out[..2], &q[..2]);
        assert_eq!(out[2] & 0x80, 0x80); // QR
        assert_eq!(out[3] & 0x0f, 0); // NOERROR
        assert_eq!(&out[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[12..], &q[12..]);
        // Responses and truncated ones are still dropped.
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert_eq!(dns.answer(&resp), None);
        assert_eq!(dns.answer(&q[..n - 1]), None);
    }

    #[test]
    fn ptr_answers_allocated_names() {
        let dns = SyntheticDns::new();
        let _ = resolve_a(&dns, "one.example");
        let ip = resolve_a(&dns, "two.example");
        let [a, b, c, d] = ip.octets();
        let rev = format!("{d}.{c}.{b}.{a}.in-addr.arpa");
        let out = dns.answer(&query(&rev, TYPE::PTR)).unwrap();
        let reply = Packet::parse(&out).unwrap();
        assert_eq!(reply.rcode(), RCODE::NoError);
        match &reply.answers[..] {
            [rr] => match &rr.rdata {
                RData::PTR(PTR(name)) => assert_eq!(name.to_string(), "two.example"),
                other => panic!("not a PTR: {other:?}"),
            },
            other => panic!("answers: {other:?}"),
        }
        // Unallocated pool address and outside addresses: NODATA.
        assert_nodata(&dns, &query("200.0.18.198.in-addr.arpa", TYPE::PTR));
        assert_nodata(&dns, &query("1.0.0.10.in-addr.arpa", TYPE::PTR));
        assert_nodata(&dns, &query("1.0.18.198.19.in-addr.arpa", TYPE::PTR));
        assert_eq!(
            parse_reverse("1.0.19.198.in-addr.arpa"),
            Some(Ipv4Addr::new(198, 19, 0, 1))
        );
        assert_eq!(parse_reverse("01.0.19.198.in-addr.arpa"), None);
        assert_eq!(parse_reverse("256.0.19.198.in-addr.arpa"), None);
    }

    #[test]
    fn names_are_normalized() {
        let dns = SyntheticDns::new();
        let a = resolve_a(&dns, "API.GitHub.com.");
        assert_eq!(resolve_a(&dns, "api.github.com"), a);
        assert_eq!(dns.address_for("Api.Github.Com"), Some(a));
        assert_eq!(dns.address_for("api.github.com."), Some(a));
        assert_eq!(
            dns.name_for(IpAddr::V4(a)).as_deref(),
            Some("api.github.com")
        );
        assert_eq!(
            normalize("_dmarc.My-Host.example."),
            Some("_dmarc.my-host.example".into())
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        let dns = SyntheticDns::new();
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghi"; 26].join("."); // 259 chars
        for bad in [
            "",
            ".",
            "a..b",
            "ex ample.com",
            "é.com",
            "a/b",
            &long_label,
            &long_name,
        ] {
            assert_eq!(dns.address_for(bad), None, "{bad:?}");
        }
        assert!(dns.address_for(&"a".repeat(63)).is_some());
        assert!(
            dns.address_for(&["a".repeat(63).as_str(); 4].join(".")[..253])
                .is_some()
        );

        // On the wire: a label with a dot or a space in it → REFUSED.
        for bad in [r"evil\.name.com", r"has\032space.com", r"bin\000ary.com"] {
            let mut p = Packet::new_query(9);
            p.questions.push(simple_dns::Question::new(
                Name::new(bad).unwrap(),
                QTYPE::TYPE(TYPE::A),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
            let out = dns.answer(&p.build_bytes_vec().unwrap()).expect("answer");
            let reply = Packet::parse(&out).unwrap();
            assert_eq!(reply.rcode(), RCODE::Refused, "{bad}");
            assert!(reply.answers.is_empty());
            assert_eq!(reply.id(), 9);
        }
        // The root name is refused for A too.
        let mut root = query("x", TYPE::A);
        root.splice(12..15, [0u8]);
        let out = dns.answer(&root).expect("answer");
        assert_eq!(Packet::parse(&out).unwrap().rcode(), RCODE::Refused);
    }

    #[test]
    fn localhost_is_loopback_without_allocation() {
        let dns = SyntheticDns::new();
        assert_eq!(resolve_a(&dns, "localhost"), Ipv4Addr::LOCALHOST);
        assert_eq!(resolve_a(&dns, "LOCALHOST."), Ipv4Addr::LOCALHOST);
        assert_eq!(resolve_a(&dns, "foo.localhost"), Ipv4Addr::LOCALHOST);
        assert_eq!(
            resolve_a(&dns, "notlocalhost"),
            Ipv4Addr::new(198, 18, 0, 1)
        );
    }

    #[test]
    fn garbage_is_dropped_without_panic() {
        let dns = SyntheticDns::new();
        assert_eq!(dns.answer(&[]), None);
        assert_eq!(dns.answer(&[0xff; 3]), None);
        assert_eq!(dns.answer(&[0xff; 64]), None);
        assert_eq!(dns.answer(b"GET / HTTP/1.1\r\n\r\n"), None);

        let q = query("api.github.com", TYPE::A);
        for cut in 0..q.len() {
            assert_eq!(dns.answer(&q[..cut]), None, "prefix {cut}");
        }
        for ty in [TYPE::AAAA, TYPE::HTTPS, TYPE::PTR] {
            let q = query("1.0.18.198.in-addr.arpa", ty);
            for cut in 0..q.len() {
                let _ = dns.answer(&q[..cut]);
            }
        }
        // No prefix allocated anything.
        assert_eq!(dns.name_for("198.18.0.1".parse().unwrap()), None);
        // Every single-byte corruption: no panic.
        for i in 0..q.len() {
            for v in [0x00, 0x3f, 0x40, 0xc0, 0xff] {
                let mut m = q.clone();
                m[i] = v;
                let _ = dns.answer(&m);
            }
        }

        // Response bit set.
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert_eq!(dns.answer(&resp), None);
        // Opcode other than QUERY (STATUS = 2).
        let mut status = q.clone();
        status[2] |= 2 << 3;
        assert_eq!(dns.answer(&status), None);
        // No question, two questions.
        let mut none = q.clone();
        none.truncate(12);
        none[5] = 0;
        assert_eq!(dns.answer(&none), None);
        let mut two = Packet::new_query(1);
        for n in ["a.com", "b.com"] {
            two.questions.push(simple_dns::Question::new(
                Name::new(n).unwrap(),
                QTYPE::TYPE(TYPE::A),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
        }
        assert_eq!(dns.answer(&two.build_bytes_vec().unwrap()), None);
        // A compression-pointer loop.
        let mut ptr_loop = q[..12].to_vec();
        ptr_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(dns.answer(&ptr_loop), None);
    }

    #[test]
    fn edns_opt_is_tolerated() {
        let dns = SyntheticDns::new();
        let mut p = Packet::new_query(3);
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        p.questions.push(simple_dns::Question::new(
            Name::new("edns.example").unwrap(),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        *p.opt_mut() = Some(simple_dns::rdata::OPT {
            opt_codes: Vec::new(),
            udp_packet_size: 1232,
            version: 0,
        });
        let out = dns.answer(&p.build_bytes_vec().unwrap()).unwrap();
        let reply = Packet::parse(&out).unwrap();
        assert_eq!(a_of(&reply), vec![Ipv4Addr::new(198, 18, 0, 1)]);
    }

    #[test]
    fn allocator_skips_network_and_broadcast_octets_and_stops_at_the_end() {
        let mut cursor = POOL_FIRST;
        assert_eq!(allocate(&mut cursor), Some(Ipv4Addr::new(198, 18, 0, 1)));
        let mut cursor = u32::from(Ipv4Addr::new(198, 18, 0, 254));
        assert_eq!(allocate(&mut cursor), Some(Ipv4Addr::new(198, 18, 0, 254)));
        assert_eq!(allocate(&mut cursor), Some(Ipv4Addr::new(198, 18, 1, 1)));
        let mut cursor = u32::from(Ipv4Addr::new(198, 18, 255, 254));
        assert_eq!(
            allocate(&mut cursor),
            Some(Ipv4Addr::new(198, 18, 255, 254))
        );
        assert_eq!(allocate(&mut cursor), Some(Ipv4Addr::new(198, 19, 0, 1)));
        let mut cursor = POOL_LAST;
        assert_eq!(
            allocate(&mut cursor),
            Some(Ipv4Addr::new(198, 19, 255, 254))
        );
        assert_eq!(allocate(&mut cursor), None);
        assert_eq!(allocate(&mut cursor), None);

        // Whole pool: 512 /24s × 254 usable addresses, none ending in .0/.255.
        let mut cursor = POOL_FIRST;
        let mut count = 0u32;
        while let Some(ip) = allocate(&mut cursor) {
            let last = ip.octets()[3];
            assert!(last != 0 && last != 255 && in_pool(ip));
            count += 1;
        }
        assert_eq!(count, 512 * 254);
    }

    #[test]
    fn exhausted_pool_refuses_new_names_but_keeps_old_ones() {
        let dns = SyntheticDns::new();
        let first = resolve_a(&dns, "kept.example");
        dns.lock().cursor = POOL_LAST;
        assert_eq!(
            dns.address_for("last.example"),
            Some(Ipv4Addr::new(198, 19, 255, 254))
        );
        assert_eq!(dns.address_for("over.example"), None);
        let out = dns.answer(&query("over.example", TYPE::A)).unwrap();
        let reply = Packet::parse(&out).unwrap();
        assert_eq!(reply.rcode(), RCODE::Refused);
        assert!(reply.answers.is_empty());
        assert_eq!(resolve_a(&dns, "kept.example"), first);
        assert_eq!(resolve_a(&dns, "localhost"), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn observer_sees_answered_questions() {
        let dns = SyntheticDns::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        dns.set_observer(Box::new(move |name, qtype, ip| {
            sink.lock()
                .unwrap()
                .push((name.to_owned(), qtype.to_owned(), ip));
        }));
        let ip = resolve_a(&dns, "Obs.Example.");
        assert_nodata(&dns, &query("obs.example", TYPE::AAAA));
        assert_nodata(&dns, &query("obs.example", TYPE::HTTPS));
        assert_eq!(dns.answer(&[1, 2, 3]), None);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("obs.example".to_owned(), "A".to_owned(), Some(ip)),
                ("obs.example".to_owned(), "AAAA".to_owned(), None),
                ("obs.example".to_owned(), "HTTPS".to_owned(), None),
            ]
        );
    }

    #[test]
    fn shared_across_threads() {
        let dns = Arc::new(SyntheticDns::new());
        let hits = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let dns = dns.clone();
                let hits = hits.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let ip = dns
                            .address_for(&format!("h{}.example", (i + t) % 300))
                            .unwrap();
                        assert!(in_pool(ip));
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(hits.load(Ordering::Relaxed), 800);
        let mut ips: Vec<_> = (0..203)
            .map(|i| dns.address_for(&format!("h{i}.example")).unwrap())
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 203);
    }

    #[tokio::test]
    async fn serves_udp_and_tcp() {
        let dns = Arc::new(SyntheticDns::new());
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let udp_task = tokio::spawn(serve_udp(udp, dns.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, dns.clone()));
        let limit = Duration::from_secs(5);

        // UDP: garbage first (dropped, server survives), then a real query.
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&[0xff; 5], udp_addr).await.unwrap();
        client
            .send_to(&query("udp.example", TYPE::A), udp_addr)
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(limit, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let reply = Packet::parse(&buf[..n]).unwrap();
        assert_eq!(reply.id(), 0x1234);
        let udp_ip = a_of(&reply)[0];
        assert!(in_pool(udp_ip));

        // TCP: two queries on one connection, then a second connection.
        let mut conn = TcpStream::connect(tcp_addr).await.unwrap();
        for (name, ty) in [("udp.example", TYPE::A), ("tcp.example", TYPE::AAAA)] {
            let q = query(name, ty);
            conn.write_u16(q.len() as u16).await.unwrap();
            conn.write_all(&q).await.unwrap();
        }
        let mut replies = Vec::new();
        for _ in 0..2 {
            let len = tokio::time::timeout(limit, conn.read_u16())
                .await
                .unwrap()
                .unwrap();
            let mut body = vec![0u8; usize::from(len)];
            tokio::time::timeout(limit, conn.read_exact(&mut body))
                .await
                .unwrap()
                .unwrap();
            replies.push(body);
        }
        let first = Packet::parse(&replies[0]).unwrap();
        assert_eq!(a_of(&first), vec![udp_ip]);
        let second = Packet::parse(&replies[1]).unwrap();
        assert_eq!(second.rcode(), RCODE::NoError);
        assert!(second.answers.is_empty());

        let mut conn2 = TcpStream::connect(tcp_addr).await.unwrap();
        let q = query("tcp.example", TYPE::A);
        conn2.write_u16(q.len() as u16).await.unwrap();
        conn2.write_all(&q).await.unwrap();
        let len = tokio::time::timeout(limit, conn2.read_u16())
            .await
            .unwrap()
            .unwrap();
        let mut body = vec![0u8; usize::from(len)];
        conn2.read_exact(&mut body).await.unwrap();
        let tcp_ip = a_of(&Packet::parse(&body).unwrap())[0];
        assert_ne!(tcp_ip, udp_ip);
        assert_eq!(
            dns.name_for(IpAddr::V4(tcp_ip)).as_deref(),
            Some("tcp.example")
        );

        // Oversized length prefix: the server closes the connection.
        conn2.write_u16(60000).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(limit, conn2.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);

        udp_task.abort();
        tcp_task.abort();
    }
}
