//! Re-signing AWS SigV4 requests made with Moat's placeholder keys.
//!
//! In sigv4 mode the sandbox holds only placeholder AWS credentials: an
//! access key id in the real format, a 40-character secret and a placeholder
//! session token. The AWS SDK or CLI inside signs every request with them;
//! [`resign`] replaces that signature with one made from real temporary
//! credentials, so no real key is ever inside. Pure: no I/O, no clock (the
//! caller passes `now`); [`resign`] reads no body, [`ChunkResigner`] only an
//! aws-chunked one. The canonical request, string to sign, signing key and
//! chunk signatures come from the `aws-sigv4` crate; only the aws-chunked
//! framing is parsed here. The `Host` signed is the `host` the caller
//! passes: the proxy sets `Host` itself.
//!
//! What [`resign`] finds and does:
//!
//! 1. **A header signature** (`Authorization: AWS4-HMAC-SHA256
//!    Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=…,
//!    Signature=…`) whose AKID is the placeholder: signed again for the same
//!    region and service, over the same `SignedHeaders` (only those headers go
//!    into the signable request; a signed header the request no longer carries
//!    is left out), with a fresh `X-Amz-Date` and the real session token.
//!    The token is signed unless the client sent one without signing it.
//!    The placeholder token goes; the new `Authorization`, `X-Amz-Date` and
//!    `X-Amz-Security-Token` are marked sensitive. [`Resigned::Headers`].
//! 2. **A presigned URL** (`X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=…`)
//!    with the placeholder: its `X-Amz-*` signing parameters are replaced by
//!    new ones, appended after every other parameter (kept byte for byte, in
//!    order). The new URL expires when the old one would have
//!    (`X-Amz-Date + X-Amz-Expires`); an expired URL is refused.
//!    [`Resigned::Query`].
//! 3. **Neither**, and the placeholder key appears nowhere:
//!    [`Resigned::NotSigned`]; the request is someone else's business (another
//!    key, no signature) and is left alone.
//!
//! The payload hash the signature covers comes from `x-amz-content-sha256`:
//!
//! | value | done |
//! |---|---|
//! | 64 hex digits | used as given (AWS checks the body against it) |
//! | `UNSIGNED-PAYLOAD`, `STREAMING-UNSIGNED-PAYLOAD-TRAILER` | headers re-signed, body untouched |
//! | `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` | aws-chunked: [`Resigned::Chunked`] |
//! | absent | the hash is over the body: the empty body's hash if the request has none (`Content-Length: 0`, or neither `Content-Length` nor `Transfer-Encoding`), else refused, or hashed by [`resign_buffered`] when the caller holds the body; S3 presigned URLs sign `UNSIGNED-PAYLOAD` |
//!
//! S3 (signing names `s3`, `s3-object-lambda`, `s3-outposts`, `s3express`)
//! signs the path as sent (single encoding, no normalization); every other
//! service double-encodes it and removes `.`/`..` segments, as the SDKs do.
//!
//! **aws-chunked.** Each chunk `hex(size);chunk-signature=SIG\r\n data \r\n`
//! is signed over the previous signature (the header signature seeds the
//! chain) and the chunk's data, up to the final 0-size chunk and, for
//! `-TRAILER`, the `x-amz-trailer-signature` over the trailing headers.
//! [`ChunkResigner`] rewrites each signature in place; signatures are always
//! 64 hex digits, so the body keeps its length and `Content-Length` holds.
//! A chunk's signature precedes its data yet covers it, so one chunk's data is
//! held before its header goes out: memory is bounded by [`MAX_CHUNK`] plus a
//! line of at most [`MAX_LINE`], never the whole body.
//!
//! Refused ([`Refusal`], which the proxy turns into a 4xx from Moat): anything
//! else that carries the placeholder key — the key anywhere outside the one
//! signature re-signed (another header, the path, another parameter), a
//! malformed `Authorization`, SigV4a (`AWS4-ECDSA-P256-SHA256`), SigV2, two
//! signatures, an unknown `x-amz-content-sha256`, a body whose hash is not
//! sent, chunk framing errors, an oversized chunk or line. A multipart POST
//! form without a header or URL signature is taken for an S3 POST-policy
//! upload, whose signature is in the body: refused too ([`resign_buffered`]
//! refuses it only when the body holds the key). On a refusal, `parts` is
//! left as it was.
//!
//! Whatever the sandbox sends with the placeholder is signed for real: the
//! region, service and request are the sandbox's choice. Which requests may
//! be signed at all (say, none that mint credentials, like STS `AssumeRole`)
//! is for the caller to decide.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::http::Headers;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, TRANSFER_ENCODING};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};
use secrecy::{ExposeSecret, SecretString};

use super::upstream::BoxError;

/// The largest aws-chunked chunk re-signed: its data is held until its
/// signature is known. SDKs send 64 KiB (Rust, Go, minio) or 128 KiB (Java).
pub const MAX_CHUNK: usize = 1 << 20;
/// The longest chunk header or trailer line (without its CRLF). A chunk header
/// is under 100 bytes.
pub const MAX_LINE: usize = 4096;
/// The most trailing headers in an aws-chunked body.
const MAX_TRAILERS: usize = 32;
/// The longest a presigned URL may live (SigV4's limit).
const MAX_EXPIRES: u64 = 7 * 24 * 3600;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SIGV4A: &str = "AWS4-ECDSA-P256-SHA256";
const CONTENT_SHA256: &str = "x-amz-content-sha256";
const DATE: &str = "x-amz-date";
const TOKEN: &str = "x-amz-security-token";
const CHUNK_SIG: &[u8] = b";chunk-signature=";
const TRAILER_SIG: &[u8] = b"x-amz-trailer-signature";
const UNSIGNED: &str = "UNSIGNED-PAYLOAD";
const UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
const STREAMING: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
const STREAMING_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";

/// The presigned-URL parameters a new signature replaces.
const QUERY_AUTH: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// The real temporary credentials a request is signed with.
#[derive(Debug)]
pub struct SigningCreds {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
}

/// What [`resign`] found and did.
#[derive(Debug)]
pub enum Resigned {
    /// No SigV4 signature with the placeholder key: the request is left alone.
    NotSigned,
    /// The `Authorization` header was signed again.
    Headers,
    /// The presigned URL's query was signed again.
    Query,
    /// The headers were signed again and the aws-chunked body must be too:
    /// run it through this (or [`ChunkBody`]). Boxed: it holds a chunk's
    /// state and the signing identity.
    Chunked(Box<ChunkResigner>),
}

/// Why Moat cannot re-sign a request that carries its placeholder AWS key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the Authorization header carries Moat's placeholder AWS key but is not a SigV4 signature Moat can read ({0}); sign with an AWS SDK or the AWS CLI"
    )]
    MalformedAuthorization(&'static str),
    #[error(
        "the presigned URL carries Moat's placeholder AWS key but its X-Amz-* parameters are not a SigV4 presignature Moat can read ({0}); presign it again with an AWS SDK or `aws s3 presign`"
    )]
    MalformedQuery(&'static str),
    #[error(
        "the request is signed with SigV4a (AWS4-ECDSA-P256-SHA256: multi-Region access points, global endpoints), which Moat cannot re-sign; address a regional endpoint so the SDK signs with SigV4"
    )]
    SigV4a,
    #[error(
        "the request is signed with AWS Signature Version 2, which Moat cannot re-sign; use a current AWS SDK or CLI (they sign with SigV4)"
    )]
    SigV2,
    #[error(
        "the Authorization header carries Moat's placeholder AWS key in a scheme other than AWS4-HMAC-SHA256, the only one Moat re-signs; sign with an AWS SDK or the AWS CLI"
    )]
    UnknownScheme,
    #[error(
        "the request has several Authorization headers, one with Moat's placeholder AWS key; send exactly one"
    )]
    SeveralAuthorizations,
    #[error(
        "the request is signed both in its Authorization header and in its URL (X-Amz-Signature); AWS accepts one, so send one"
    )]
    TwoSignatures,
    #[error("the presigned URL expired (signed at {signed_at} for {expires} s); presign it again")]
    Expired { signed_at: String, expires: u64 },
    #[error(
        "x-amz-content-sha256 is {0:?}, a payload mode Moat cannot re-sign; it re-signs a hex SHA-256, UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER and STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]"
    )]
    UnknownPayload(String),
    #[error(
        "the request signs an aws-chunked body in a presigned URL, which Moat cannot re-sign; sign it in the Authorization header (the SDK default) instead"
    )]
    PresignedChunks,
    #[error(
        "the {service} request's signature covers a SHA-256 of its body (it sends no x-amz-content-sha256), and Moat re-signs without reading bodies; send x-amz-content-sha256 with the body's SHA-256"
    )]
    BodyNotHashed { service: String },
    #[error(
        "a multipart/form-data POST with no SigV4 signature in its headers or URL is an S3 browser-form (POST policy) upload, whose signature is in the body, where Moat cannot re-sign it; upload with PUT (`aws s3 cp`, PutObject) or a presigned PUT URL"
    )]
    PostForm,
    #[error(
        "Moat's placeholder AWS key appears in {0}, outside any SigV4 signature Moat can re-sign; AWS would reject it there, so Moat does not forward it"
    )]
    PlaceholderElsewhere(String),
    #[error(
        "the signed header {0} is not visible ASCII, which Moat cannot re-sign; send it without control or non-ASCII bytes"
    )]
    UnsignableHeader(String),
    #[error("aws-sigv4 could not sign the request: {0}")]
    Signing(String),
    #[error(
        "the aws-chunked body is malformed ({0}); Moat re-signs every chunk and cannot forward a body it cannot parse"
    )]
    ChunkFraming(&'static str),
    #[error(
        "an aws-chunked chunk of {0} bytes is over Moat's limit of {MAX_CHUNK} (it holds one whole chunk to re-sign it); send chunks of at most 1 MiB (the SDKs send 64 or 128 KiB) or an unsigned payload"
    )]
    ChunkTooLarge(u64),
    #[error(
        "an aws-chunked chunk header or trailer line is over {MAX_LINE} bytes; Moat re-signs only well-formed chunked bodies"
    )]
    LineTooLong,
    #[error("the aws-chunked body goes on after its final 0-size chunk; end it there")]
    TrailingData,
    #[error(
        "the aws-chunked body ended before its final 0-size chunk (a truncated upload); send it again"
    )]
    Truncated,
}

/// Re-signs `parts` if it is signed with `placeholder_key_id`: see the module
/// doc. `host` is the authority the request goes to (port included if not
/// the scheme's default): the proxy sets `Host` itself, so that is what AWS
/// sees and what is signed. An empty placeholder matches nothing.
pub fn resign(
    parts: &mut Parts,
    host: &str,
    placeholder_key_id: &str,
    creds: &SigningCreds,
    now: SystemTime,
) -> Result<Resigned, Refusal> {
    resign_with(parts, None, host, placeholder_key_id, creds, now)
}

/// [`resign`] for a caller that holds the whole `body`: a request without
/// `x-amz-content-sha256` is signed over the body's hash instead of refused,
/// and a multipart POST form is refused only if the body has the placeholder.
pub fn resign_buffered(
    parts: &mut Parts,
    body: &[u8],
    host: &str,
    placeholder_key_id: &str,
    creds: &SigningCreds,
    now: SystemTime,
) -> Result<Resigned, Refusal> {
    resign_with(parts, Some(body), host, placeholder_key_id, creds, now)
}

fn resign_with(
    parts: &mut Parts,
    body: Option<&[u8]>,
    host: &str,
    placeholder: &str,
    creds: &SigningCreds,
    now: SystemTime,
) -> Result<Resigned, Refusal> {
    if placeholder.is_empty() {
        return Ok(Resigned::NotSigned);
    }
    let header = header_signature(&parts.headers, placeholder)?;
    if header.is_some() && query_credential(&parts.uri, placeholder) {
        return Err(Refusal::TwoSignatures);
    }
    let query = query_signature(&parts.uri, placeholder)?;
    let req = Request {
        parts,
        body,
        host,
        creds,
        now,
    };
    let signed = match (&header, &query) {
        (Some(_), Some(_)) => return Err(Refusal::TwoSignatures),
        (Some(_), None) => Some(Signed::Header),
        (None, Some(_)) => Some(Signed::Query),
        (None, None) => None,
    };
    if let Some(place) = placeholder_place(req.parts, placeholder, signed) {
        return Err(place);
    }
    match (header, query) {
        (Some(scope), _) => req.resign_headers(scope),
        (None, Some(presigned)) => req.resign_query(presigned),
        (None, None) => {
            if is_post_form(req.parts) && body.is_none_or(|b| contains(b, placeholder.as_bytes())) {
                return Err(Refusal::PostForm);
            }
            Ok(Resigned::NotSigned)
        }
    }
}

/// A signature's credential scope and signed headers, as the client sent them.
#[derive(Debug, PartialEq)]
struct Scope {
    region: String,
    service: String,
    signed_headers: Vec<String>,
}

/// A presigned URL's signing parameters.
#[derive(Debug, PartialEq)]
struct Presigned {
    scope: Scope,
    signed_at: SystemTime,
    date: String,
    expires: u64,
}

/// The `Authorization` header's scope, if it is signed with the placeholder.
fn header_signature(headers: &HeaderMap, placeholder: &str) -> Result<Option<Scope>, Refusal> {
    let all: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    let ours: Vec<&HeaderValue> = all
        .iter()
        .copied()
        .filter(|v| contains(v.as_bytes(), placeholder.as_bytes()))
        .collect();
    let Some(value) = ours.first() else {
        return Ok(None);
    };
    if all.len() > 1 {
        return Err(Refusal::SeveralAuthorizations);
    }
    let value = value
        .to_str()
        .map_err(|_| Refusal::MalformedAuthorization("not ASCII"))?;
    let Some(rest) = value.strip_prefix(ALGORITHM) else {
        return Err(if value.starts_with(SIGV4A) {
            Refusal::SigV4a
        } else if value.starts_with("AWS ") {
            Refusal::SigV2
        } else {
            Refusal::UnknownScheme
        });
    };
    if !rest.starts_with(' ') {
        return Err(Refusal::MalformedAuthorization(
            "no space after the algorithm",
        ));
    }
    parse_authorization(rest, placeholder)
        .map(Some)
        .map_err(Refusal::MalformedAuthorization)
}

/// `Credential=…, SignedHeaders=…, Signature=…` (any order, `,` with or
/// without spaces).
fn parse_authorization(fields: &str, placeholder: &str) -> Result<Scope, &'static str> {
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in fields.split(',') {
        let (name, value) = field.trim().split_once('=').ok_or("a field without `=`")?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err("an unknown field"),
        };
        if slot.replace(value).is_some() {
            return Err("a repeated field");
        }
    }
    let credential = credential.ok_or("no Credential")?;
    let signed = signed.ok_or("no SignedHeaders")?;
    let signature = signature.ok_or("no Signature")?;
    if !is_hex64(signature.as_bytes()) {
        return Err("the Signature is not 64 hex digits");
    }
    let (region, service) = parse_credential(credential, placeholder)?;
    Ok(Scope {
        region,
        service,
        signed_headers: parse_signed_headers(signed)?,
    })
}

/// `AKID/YYYYMMDD/REGION/SERVICE/aws4_request`, AKID the placeholder.
fn parse_credential(credential: &str, placeholder: &str) -> Result<(String, String), &'static str> {
    let fields: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = fields[..] else {
        return Err("the Credential is not KEY/DATE/REGION/SERVICE/aws4_request");
    };
    if key_id != placeholder {
        return Err("the Credential's key is not exactly the placeholder");
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the Credential's date is not YYYYMMDD");
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !name_ok(region) || !name_ok(service) {
        return Err("the Credential's region or service is not lowercase letters, digits and `-`");
    }
    Ok((region.to_owned(), service.to_owned()))
}

/// `a;b;c`: lowercase header names, never `authorization`.
fn parse_signed_headers(list: &str) -> Result<Vec<String>, &'static str> {
    let mut names = Vec::new();
    for name in list.split(';') {
        let token =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err("SignedHeaders is not a `;`-separated list of lowercase header names");
        }
        if name == "authorization" {
            return Err("SignedHeaders lists authorization");
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Does an `X-Amz-Credential` in the query carry the placeholder?
fn query_credential(uri: &Uri, placeholder: &str) -> bool {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).any(|(name, value)| {
        name.eq_ignore_ascii_case(QUERY_AUTH[1]) && value.contains(placeholder)
    })
}

/// The presigned URL's parameters, if its credential is the placeholder.
fn query_signature(uri: &Uri, placeholder: &str) -> Result<Option<Presigned>, Refusal> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    if !query_credential(uri, placeholder) {
        return Ok(None);
    }
    let mut found: [Option<String>; QUERY_AUTH.len()] = Default::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let Some(i) = QUERY_AUTH
            .iter()
            .position(|p| p.eq_ignore_ascii_case(&name))
        else {
            continue;
        };
        if found[i].replace(value.into_owned()).is_some() {
            // Repeated: empty, which reads as malformed below.
            found[i] = Some(String::new());
        }
    }
    let [
        algorithm,
        credential,
        date,
        expires,
        signed,
        signature,
        _token,
    ] = found;
    let get = |v: Option<String>, what: &'static str| {
        v.filter(|v| !v.is_empty())
            .ok_or(Refusal::MalformedQuery(what))
    };
    let algorithm = get(algorithm, "X-Amz-Algorithm is missing or repeated")?;
    if algorithm == SIGV4A {
        return Err(Refusal::SigV4a);
    }
    if algorithm != ALGORITHM {
        return Err(Refusal::MalformedQuery(
            "X-Amz-Algorithm is not AWS4-HMAC-SHA256",
        ));
    }
    let credential = get(credential, "X-Amz-Credential is repeated")?;
    let date = get(date, "X-Amz-Date is missing or repeated")?;
    let expires = get(expires, "X-Amz-Expires is missing or repeated")?;
    let signed = get(signed, "X-Amz-SignedHeaders is missing or repeated")?;
    let signature = get(signature, "X-Amz-Signature is missing or repeated")?;
    if !is_hex64(signature.as_bytes()) {
        return Err(Refusal::MalformedQuery(
            "X-Amz-Signature is not 64 hex digits",
        ));
    }
    let signed_at = parse_amz_date(&date).ok_or(Refusal::MalformedQuery(
        "X-Amz-Date is not YYYYMMDDTHHMMSSZ",
    ))?;
    let expires = expires
        .parse::<u64>()
        .ok()
        .filter(|e| (1..=MAX_EXPIRES).contains(e))
        .ok_or(Refusal::MalformedQuery(
            "X-Amz-Expires is not 1 to 604800 seconds",
        ))?;
    let (region, service) =
        parse_credential(&credential, placeholder).map_err(Refusal::MalformedQuery)?;
    let signed_headers = parse_signed_headers(&signed).map_err(Refusal::MalformedQuery)?;
    Ok(Some(Presigned {
        scope: Scope {
            region,
            service,
            signed_headers,
        },
        signed_at,
        date,
        expires,
    }))
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(date: &str) -> Option<SystemTime> {
    let b = date.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// Where the placeholder key shows outside the signature Moat re-signs
/// (the `Authorization` header, or the query's signing parameters), as a
/// refusal naming the place.
fn placeholder_place(parts: &Parts, placeholder: &str, signed: Option<Signed>) -> Option<Refusal> {
    let key = placeholder.as_bytes();
    if let Some(query) = parts.uri.query() {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if signed == Some(Signed::Query)
                && QUERY_AUTH.iter().any(|p| p.eq_ignore_ascii_case(&name))
            {
                continue;
            }
            if value.contains(placeholder) || name.contains(placeholder) {
                if name.eq_ignore_ascii_case("AWSAccessKeyId") {
                    return Some(Refusal::SigV2);
                }
                return Some(Refusal::PlaceholderElsewhere(format!(
                    "the URL parameter {name}"
                )));
            }
        }
    }
    let authority = parts.uri.authority().map_or("", |a| a.as_str());
    if contains(parts.uri.path().as_bytes(), key) || contains(authority.as_bytes(), key) {
        return Some(Refusal::PlaceholderElsewhere("the URL".into()));
    }
    parts
        .headers
        .iter()
        .filter(|(name, _)| !(signed == Some(Signed::Header) && *name == AUTHORIZATION))
        .find(|(_, v)| contains(v.as_bytes(), key))
        .map(|(name, _)| Refusal::PlaceholderElsewhere(format!("the {name} header")))
}

/// Where the signature being re-signed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signed {
    Header,
    Query,
}

fn is_post_form(parts: &Parts) -> bool {
    parts.method == Method::POST
        && parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .get(..19)
                    .is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data"))
            })
}

/// What the signature covers of the body.
enum Payload<'a> {
    /// The hash (or mode) `x-amz-content-sha256` gave.
    Given(String),
    /// The body itself (empty when the request has none).
    Bytes(&'a [u8]),
}

/// One request being re-signed.
struct Request<'a> {
    parts: &'a mut Parts,
    body: Option<&'a [u8]>,
    host: &'a str,
    creds: &'a SigningCreds,
    now: SystemTime,
}

impl Request<'_> {
    fn resign_headers(self, scope: Scope) -> Result<Resigned, Refusal> {
        let (payload, chunked) = self.payload(&scope.service, false)?;
        let signed_token = scope.signed_headers.iter().any(|h| h == TOKEN);
        let sent_token = self.parts.headers.contains_key(TOKEN);
        let mut settings = settings(&scope.service);
        if sent_token && !signed_token {
            // The client kept the token out of the signature: this service
            // wants it so.
            settings.session_token_mode = SessionTokenMode::Exclude;
        }
        let identity = self.identity();
        let (instructions, signature) = self
            .sign(&scope, payload, &identity, settings)?
            .into_parts();
        let (new_headers, _) = instructions.into_parts();
        let mut set = Vec::with_capacity(new_headers.len());
        for header in &new_headers {
            let name = HeaderName::from_bytes(header.name().as_bytes())
                .map_err(|e| Refusal::Signing(e.to_string()))?;
            let mut value = HeaderValue::from_str(header.value())
                .map_err(|e| Refusal::Signing(e.to_string()))?;
            value.set_sensitive(true);
            set.push((name, value));
        }
        let headers = &mut self.parts.headers;
        headers.remove(AUTHORIZATION);
        headers.remove(DATE);
        headers.remove(TOKEN);
        for (name, value) in set {
            headers.insert(name, value);
        }
        Ok(match chunked {
            None => Resigned::Headers,
            Some(trailer) => Resigned::Chunked(Box::new(ChunkResigner::new(
                identity, scope, self.now, signature, trailer,
            ))),
        })
    }

    fn resign_query(self, presigned: Presigned) -> Result<Resigned, Refusal> {
        let (payload, chunked) = self.payload(&presigned.scope.service, true)?;
        if chunked.is_some() {
            return Err(Refusal::PresignedChunks);
        }
        let deadline = presigned.signed_at + Duration::from_secs(presigned.expires);
        let left = deadline
            .duration_since(self.now)
            .ok()
            .map(|d| d.as_secs().min(presigned.expires))
            .filter(|&s| s > 0)
            .ok_or_else(|| Refusal::Expired {
                signed_at: presigned.date.clone(),
                expires: presigned.expires,
            })?;
        let mut settings = settings(&presigned.scope.service);
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(left));
        let kept = kept_query(&self.parts.uri);
        let identity = self.identity();
        let (instructions, _) = self
            .sign_uri(&presigned.scope, payload, &identity, settings, &kept)?
            .into_parts();
        let (_, params) = instructions.into_parts();
        let mut query = kept;
        for (name, value) in params {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&aws_encode(name));
            query.push('=');
            query.push_str(&aws_encode(&value));
        }
        let path_and_query = PathAndQuery::try_from(format!("{}?{query}", self.parts.uri.path()))
            .map_err(|e| Refusal::Signing(e.to_string()))?;
        let mut uri = self.parts.uri.clone().into_parts();
        uri.path_and_query = Some(path_and_query);
        self.parts.uri = Uri::from_parts(uri).map_err(|e| Refusal::Signing(e.to_string()))?;
        // The token travels in the URL; a placeholder one in a header goes.
        self.parts.headers.remove(TOKEN);
        Ok(Resigned::Query)
    }

    /// The payload the signature covers, and whether the body is aws-chunked
    /// (`Some(has_trailer)`).
    fn payload(
        &self,
        service: &str,
        presigned: bool,
    ) -> Result<(Payload<'_>, Option<bool>), Refusal> {
        let mut values = self.parts.headers.get_all(CONTENT_SHA256).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(Refusal::UnknownPayload("(sent more than once)".into()));
            }
            let Ok(v) = value.to_str() else {
                return Err(Refusal::UnknownPayload(
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ));
            };
            let chunked = match v {
                _ if is_hex64(v.as_bytes()) => None,
                UNSIGNED | UNSIGNED_TRAILER => None,
                STREAMING => Some(false),
                STREAMING_TRAILER => Some(true),
                _ if v.starts_with("STREAMING-AWS4-ECDSA-P256-SHA256") => {
                    return Err(Refusal::SigV4a);
                }
                _ => return Err(Refusal::UnknownPayload(v.chars().take(80).collect())),
            };
            return Ok((Payload::Given(v.to_owned()), chunked));
        }
        if presigned && is_s3(service) {
            return Ok((Payload::Given(UNSIGNED.to_owned()), None));
        }
        if let Some(body) = self.body {
            return Ok((Payload::Bytes(body), None));
        }
        let headers = &self.parts.headers;
        let empty = match headers.get(CONTENT_LENGTH) {
            Some(len) => len.as_bytes() == b"0",
            None => !headers.contains_key(TRANSFER_ENCODING),
        };
        if !empty {
            return Err(Refusal::BodyNotHashed {
                service: service.to_owned(),
            });
        }
        Ok((Payload::Bytes(&[]), None))
    }

    fn identity(&self) -> Identity {
        Credentials::new(
            &self.creds.access_key_id,
            self.creds.secret_access_key.expose_secret(),
            self.creds
                .session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            None,
            "moat",
        )
        .into()
    }

    fn sign(
        &self,
        scope: &Scope,
        payload: Payload<'_>,
        identity: &Identity,
        settings: SigningSettings,
    ) -> Result<aws_sigv4::SigningOutput<aws_sigv4::http_request::SigningInstructions>, Refusal>
    {
        let query = self.parts.uri.query().unwrap_or("");
        self.sign_uri(scope, payload, identity, settings, query)
    }

    /// Signs the request with `query` for its query string.
    fn sign_uri(
        &self,
        scope: &Scope,
        payload: Payload<'_>,
        identity: &Identity,
        settings: SigningSettings,
        query: &str,
    ) -> Result<aws_sigv4::SigningOutput<aws_sigv4::http_request::SigningInstructions>, Refusal>
    {
        let mut headers: Vec<(&str, &str)> = vec![("host", self.host)];
        for name in &scope.signed_headers {
            // The signer adds these itself, with the new values.
            if matches!(name.as_str(), "host" | DATE | TOKEN) {
                continue;
            }
            for value in self.parts.headers.get_all(name.as_str()) {
                let value = value
                    .to_str()
                    .map_err(|_| Refusal::UnsignableHeader(name.clone()))?;
                headers.push((name.as_str(), value));
            }
        }
        let uri = match query {
            "" => Cow::Borrowed(self.parts.uri.path()),
            q => Cow::Owned(format!("{}?{q}", self.parts.uri.path())),
        };
        let body = match &payload {
            Payload::Given(hash) => SignableBody::Precomputed(hash.clone()),
            Payload::Bytes(b) => SignableBody::Bytes(b),
        };
        let request =
            SignableRequest::new(self.parts.method.as_str(), uri, headers.into_iter(), body)
                .map_err(|e| Refusal::Signing(e.to_string()))?;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&scope.region)
            .name(&scope.service)
            .time(self.now)
            .settings(settings)
            .build()
            .map_err(|e| Refusal::Signing(e.to_string()))?
            .into();
        sign(request, &params).map_err(|e| Refusal::Signing(e.to_string()))
    }
}

/// Signing settings for `service`: S3 signs the path as sent, the others
/// double-encode and normalize it. Only the headers the client signed reach
/// the signer, so none is excluded.
fn settings(service: &str) -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    if is_s3(service) {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    settings
}

fn is_s3(service: &str) -> bool {
    matches!(
        service,
        "s3" | "s3-object-lambda" | "s3-outposts" | "s3express"
    )
}

/// The raw query without its SigV4 signing parameters, other parameters
/// kept byte for byte and in order.
fn kept_query(uri: &Uri) -> String {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|piece| {
            !piece.is_empty()
                && !form_urlencoded::parse(piece.as_bytes())
                    .next()
                    .is_some_and(|(name, _)| {
                        QUERY_AUTH.iter().any(|p| p.eq_ignore_ascii_case(&name))
                    })
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// SigV4's URI encoding: everything but `A-Za-z0-9-_.~` as `%XX`.
fn aws_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_hex64(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(u8::is_ascii_hexdigit)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Where a [`ChunkResigner`] is in the aws-chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk header line: `hex(size);chunk-signature=SIG`.
    Header,
    /// Holding the current chunk's data; this much is still to come.
    Data(usize),
    /// Expecting the CRLF after a chunk's data; this much of it seen.
    DataEnd(usize),
    /// After the final 0-size chunk: trailing headers until an empty line.
    Trailer,
    /// The body is complete.
    Done,
    /// A refusal was returned; nothing more is accepted.
    Failed,
}

/// Re-signs an aws-chunked body, fed in any pieces: every chunk signature
/// and the trailer signature get their new values in the chain the header
/// signature seeds. Everything else passes byte for byte, so the output is
/// exactly as long as the input.
pub struct ChunkResigner {
    identity: Identity,
    region: String,
    service: String,
    time: SystemTime,
    /// `-TRAILER`: trailing headers and their signature follow the last chunk.
    trailer: bool,
    /// The signature the next one chains from.
    prev: String,
    state: State,
    /// The line being read, CRLF included once complete.
    line: Vec<u8>,
    /// The current chunk's size as sent (hex digits).
    size: Vec<u8>,
    /// The current chunk's data so far.
    data: BytesMut,
    trailers: Headers,
    trailer_lines: usize,
    trailer_signed: bool,
}

impl fmt::Debug for ChunkResigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkResigner")
            .field("region", &self.region)
            .field("service", &self.service)
            .field("trailer", &self.trailer)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ChunkResigner {
    fn new(
        identity: Identity,
        scope: Scope,
        time: SystemTime,
        seed: String,
        trailer: bool,
    ) -> Self {
        Self {
            identity,
            region: scope.region,
            service: scope.service,
            time,
            trailer,
            prev: seed,
            state: State::Header,
            line: Vec::new(),
            size: Vec::new(),
            data: BytesMut::new(),
            trailers: Headers::new(),
            trailer_lines: 0,
            trailer_signed: false,
        }
    }

    /// Consumes all of `input`, appending what can go out to `out`. A chunk's
    /// header and data go out together once its data is complete.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), Refusal> {
        let mut input = input;
        while !input.is_empty() {
            match self.step(input, out) {
                Ok(used) => input = &input[used..],
                Err(e) => {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The body ended: it must have ended exactly after its last chunk (and
    /// trailers). Nothing is held back, so nothing is appended to `out`.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), Refusal> {
        let _ = out;
        match self.state {
            State::Done => Ok(()),
            State::Failed => Err(Refusal::ChunkFraming("an earlier part was refused")),
            _ => {
                self.state = State::Failed;
                Err(Refusal::Truncated)
            }
        }
    }

    /// Consumes a prefix of `input` (at least one byte); returns its length.
    fn step(&mut self, input: &[u8], out: &mut BytesMut) -> Result<usize, Refusal> {
        match self.state {
            State::Header => {
                let (used, line) = self.take_line(input)?;
                if let Some(line) = line {
                    self.chunk_header(&line, out)?;
                }
                Ok(used)
            }
            State::Data(left) => {
                let used = left.min(input.len());
                self.data.extend_from_slice(&input[..used]);
                if used == left {
                    let data = self.data.split().freeze();
                    let signature = self.sign_chunk(&data)?;
                    out.extend_from_slice(&self.size);
                    out.extend_from_slice(CHUNK_SIG);
                    out.extend_from_slice(signature.as_bytes());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                    self.state = State::DataEnd(0);
                } else {
                    self.state = State::Data(left - used);
                }
                Ok(used)
            }
            State::DataEnd(seen) => {
                if input[0] != b"\r\n"[seen] {
                    return Err(Refusal::ChunkFraming(
                        "a chunk's data is not followed by CRLF",
                    ));
                }
                out.extend_from_slice(&input[..1]);
                self.state = if seen == 1 {
                    State::Header
                } else {
                    State::DataEnd(1)
                };
                Ok(1)
            }
            State::Trailer => {
                let (used, line) = self.take_line(input)?;
                if let Some(line) = line {
                    self.trailer_line(&line, out)?;
                }
                Ok(used)
            }
            State::Done => Err(Refusal::TrailingData),
            State::Failed => Err(Refusal::ChunkFraming("an earlier part was refused")),
        }
    }

    /// Reads into the current line; returns the bytes used and, once the
    /// line is complete, the line without its CRLF.
    fn take_line(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), Refusal> {
        let end = input.iter().position(|&b| b == b'\n');
        let used = end.map_or(input.len(), |i| i + 1);
        // Up to MAX_LINE bytes and CRLF; without the LF yet, at most the CR.
        if self.line.len() + used > MAX_LINE + 2 {
            return Err(Refusal::LineTooLong);
        }
        self.line.extend_from_slice(&input[..used]);
        if end.is_none() {
            if self.line.len() > MAX_LINE && !self.line.ends_with(b"\r") {
                return Err(Refusal::LineTooLong);
            }
            return Ok((used, None));
        }
        let mut line = std::mem::take(&mut self.line);
        if !line.ends_with(b"\r\n") {
            return Err(Refusal::ChunkFraming("a line ends in LF without CR"));
        }
        line.truncate(line.len() - 2);
        Ok((used, Some(line)))
    }

    /// `hex(size);chunk-signature=SIG`: starts a chunk, or ends the data with
    /// the final 0-size one (whose signature goes out at once).
    fn chunk_header(&mut self, line: &[u8], out: &mut BytesMut) -> Result<(), Refusal> {
        let split = line
            .iter()
            .position(|&b| b == b';')
            .ok_or(Refusal::ChunkFraming(
                "a chunk header has no chunk-signature",
            ))?;
        let (size, rest) = line.split_at(split);
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(Refusal::ChunkFraming("a chunk size is not hex digits"));
        }
        let signature =
            rest.strip_prefix(CHUNK_SIG)
                .filter(|s| is_hex64(s))
                .ok_or(Refusal::ChunkFraming(
                    "a chunk header is not `size;chunk-signature=` and 64 hex digits",
                ))?;
        let _ = signature;
        let size_value = size
            .iter()
            .try_fold(0u64, |n, &d| {
                let digit = u64::from(char::from(d).to_digit(16)?);
                n.checked_mul(16)?.checked_add(digit)
            })
            .ok_or(Refusal::ChunkFraming("a chunk size overflows"))?;
        let len = usize::try_from(size_value)
            .ok()
            .filter(|&n| n <= MAX_CHUNK)
            .ok_or(Refusal::ChunkTooLarge(size_value))?;
        self.size.clear();
        self.size.extend_from_slice(size);
        if len > 0 {
            self.state = State::Data(len);
            return Ok(());
        }
        let signature = self.sign_chunk(&Bytes::new())?;
        out.extend_from_slice(size);
        out.extend_from_slice(CHUNK_SIG);
        out.extend_from_slice(signature.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.state = State::Trailer;
        Ok(())
    }

    /// A line after the final chunk: a trailing header, the trailer signature
    /// (last), or the empty line that ends the body.
    fn trailer_line(&mut self, line: &[u8], out: &mut BytesMut) -> Result<(), Refusal> {
        if line.is_empty() {
            if self.trailer_lines > 0 && !self.trailer_signed {
                return Err(Refusal::ChunkFraming(
                    "trailing headers without x-amz-trailer-signature",
                ));
            }
            out.extend_from_slice(b"\r\n");
            self.state = State::Done;
            return Ok(());
        }
        if !self.trailer {
            return Err(Refusal::ChunkFraming(
                "trailing headers in a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body (only -TRAILER has them)",
            ));
        }
        if self.trailer_signed {
            return Err(Refusal::ChunkFraming(
                "a line after x-amz-trailer-signature",
            ));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Refusal::ChunkFraming("a trailing header without `:`"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(TRAILER_SIG) {
            if !is_hex64(value) {
                return Err(Refusal::ChunkFraming(
                    "x-amz-trailer-signature is not 64 hex digits",
                ));
            }
            let signature = self.sign_trailer()?;
            out.extend_from_slice(name);
            out.extend_from_slice(b":");
            out.extend_from_slice(signature.as_bytes());
            out.extend_from_slice(b"\r\n");
            self.trailer_signed = true;
            return Ok(());
        }
        self.trailer_lines += 1;
        if self.trailer_lines > MAX_TRAILERS {
            return Err(Refusal::ChunkFraming("more than 32 trailing headers"));
        }
        let (Ok(name_str), Ok(value_str)) = (std::str::from_utf8(name), std::str::from_utf8(value))
        else {
            return Err(Refusal::ChunkFraming("a trailing header is not ASCII"));
        };
        self.trailers
            .try_append(name_str.to_owned(), value_str.trim().to_owned())
            .map_err(|_| Refusal::ChunkFraming("a trailing header is not a valid header"))?;
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn params(&self) -> Result<v4::SigningParams<'_, ()>, Refusal> {
        v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.time)
            .settings(())
            .build()
            .map_err(|e| Refusal::Signing(e.to_string()))
    }

    fn sign_chunk(&mut self, data: &Bytes) -> Result<String, Refusal> {
        let params = self.params()?;
        let (_, signature) = v4::sign_chunk(data, &self.prev, &params)
            .map_err(|e| Refusal::Signing(e.to_string()))?
            .into_parts();
        self.prev = signature.clone();
        Ok(signature)
    }

    fn sign_trailer(&mut self) -> Result<String, Refusal> {
        let params = self.params()?;
        let (_, signature) = v4::sign_trailer(&self.trailers, &self.prev, &params)
            .map_err(|e| Refusal::Signing(e.to_string()))?
            .into_parts();
        self.prev = signature.clone();
        Ok(signature)
    }
}

pin_project_lite::pin_project! {
    /// A request body run through a [`ChunkResigner`] as it streams: each
    /// frame's bytes go out as soon as the chunks they complete are signed.
    /// Same length as the inner body, so its size hint is passed on.
    pub struct ChunkBody<B> {
        #[pin]
        inner: B,
        resigner: ChunkResigner,
        out: BytesMut,
        done: bool,
    }
}

impl<B> ChunkBody<B> {
    pub fn new(inner: B, resigner: ChunkResigner) -> Self {
        Self {
            inner,
            resigner,
            out: BytesMut::new(),
            done: false,
        }
    }
}

impl<B> Body for ChunkBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = this.resigner.feed(&data, this.out) {
                            *this.done = true;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                        if !this.out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                        }
                    }
                    // HTTP trailers (not aws-chunked ones) pass as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    *this.done = true;
                    if let Err(e) = this.resigner.finish(this.out) {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    if !this.out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The check the `sigv4` fuzz target runs (and the seed test in CI).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    const KEY: &str = "ASIAFUZZPLACEHOLDER0";

    /// Input layout: a mode byte, then the payload. Mode bit 7 clear: the
    /// payload is an aws-chunked body (`-TRAILER` if bit 0 is set), fed in
    /// pieces the other bits pick; fed whole or in pieces, the result is the
    /// same, and a re-signed body is as long as the input and differs only
    /// in hex digits. Bit 7 set: the payload's first line is an
    /// `Authorization` value and the rest a query string; whatever is
    /// re-signed carries the placeholder key no more.
    pub fn fuzz_check(data: &[u8]) {
        let Some((&mode, payload)) = data.split_first() else {
            return;
        };
        if mode & 0x80 == 0 {
            check_body(mode, payload);
        } else {
            check_head(payload);
        }
    }

    fn creds() -> SigningCreds {
        SigningCreds {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("real-token".into()),
        }
    }

    fn resigner(trailer: bool) -> Box<ChunkResigner> {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={KEY}/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}",
            "0".repeat(64)
        );
        let mode = if trailer {
            STREAMING_TRAILER
        } else {
            STREAMING
        };
        let mut parts = http::Request::put("/b/k")
            .header(AUTHORIZATION, auth)
            .header(CONTENT_SHA256, mode)
            .body(())
            .map(|r| r.into_parts().0)
            .expect("a valid request");
        match resign(
            &mut parts,
            "s3.amazonaws.com",
            KEY,
            &creds(),
            SystemTime::UNIX_EPOCH,
        ) {
            Ok(Resigned::Chunked(r)) => r,
            other => panic!("not chunked: {other:?}"),
        }
    }

    fn run(trailer: bool, body: &[u8], piece: usize) -> Result<Vec<u8>, Refusal> {
        let mut r = resigner(trailer);
        let mut out = BytesMut::new();
        for part in body.chunks(piece.max(1)) {
            r.feed(part, &mut out)?;
        }
        r.finish(&mut out)?;
        Ok(out.to_vec())
    }

    fn check_body(mode: u8, body: &[u8]) {
        let trailer = mode & 1 != 0;
        let whole = run(trailer, body, body.len());
        let pieces = run(trailer, body, usize::from(mode >> 1));
        assert_eq!(whole, pieces, "fed whole and in pieces of {}", mode >> 1);
        if let Ok(out) = whole {
            assert_eq!(out.len(), body.len());
            let masked = |b: &[u8]| -> Vec<u8> {
                b.iter()
                    .map(|&c| if c.is_ascii_hexdigit() { b'0' } else { c })
                    .collect()
            };
            assert_eq!(masked(&out), masked(body));
        }
    }

    fn check_head(payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let (auth, query) = text.split_once('\n').unwrap_or((&text, ""));
        let mut req = http::Request::get(format!("/k?{query}"));
        if !auth.is_empty() {
            req = req.header(AUTHORIZATION, auth);
        }
        let Ok(req) = req.body(()) else {
            return;
        };
        let mut parts = req.into_parts().0;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let Ok(done) = resign(&mut parts, "b.s3.amazonaws.com", KEY, &creds(), now) else {
            return;
        };
        if matches!(done, Resigned::NotSigned) {
            return;
        }
        assert!(!contains(parts.uri.to_string().as_bytes(), KEY.as_bytes()));
        for (name, value) in &parts.headers {
            assert!(!contains(value.as_bytes(), KEY.as_bytes()), "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Does a refusal match what a case expects?
    type Expect = fn(&Refusal) -> bool;
    /// A presigned URL, the request's headers and the refusal expected.
    type QueryCase = (String, &'static [(&'static str, &'static str)], Expect);

    /// The sandbox's placeholder key: `ASIA` and 16 uppercase letters or digits.
    const PLACEHOLDER: &str = "ASIAMOATPLACEHOLDER0";
    const PLACEHOLDER_TOKEN: &str = "moat-placeholder-session-token";
    /// What the sandbox's SDK computed with the placeholder secret.
    const FAKE_SIG: &str = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The key of the S3 documentation examples (note the `/` in the secret).
    fn s3_docs_creds() -> SigningCreds {
        SigningCreds {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// The key of the SigV4 test suite (`aws-signing-test-suite/v4`).
    fn suite_creds(token: Option<&str>) -> SigningCreds {
        SigningCreds {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(SecretString::from),
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    fn s3_docs_time() -> SystemTime {
        at("2013-05-24T00:00:00Z")
    }

    fn suite_time() -> SystemTime {
        at("2015-08-30T12:36:00Z")
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    /// An `Authorization` header as the sandbox's SDK makes it.
    fn placeholder_auth(region: &str, service: &str, signed: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={PLACEHOLDER}/20991231/{region}/{service}/aws4_request, SignedHeaders={signed}, Signature={FAKE_SIG}"
        )
    }

    fn header<'a>(parts: &'a Parts, name: &str) -> &'a str {
        parts.headers.get(name).unwrap().to_str().unwrap()
    }

    fn signature(parts: &Parts) -> &str {
        header(parts, "authorization")
            .rsplit_once("Signature=")
            .unwrap()
            .1
    }

    fn snapshot(parts: &Parts) -> (String, Vec<(String, Vec<u8>)>) {
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        (parts.uri.to_string(), headers)
    }

    fn refused(mut p: Parts, host: &str, creds: &SigningCreds) -> Refusal {
        let before = snapshot(&p);
        let err = resign(&mut p, host, PLACEHOLDER, creds, s3_docs_time()).unwrap_err();
        assert_eq!(snapshot(&p), before, "a refusal changed the request");
        assert!(!err.to_string().is_empty());
        err
    }

    // ---- The AWS documentation vectors ----

    /// S3 API reference, "Signature calculation examples: GET object"
    /// (sig-v4-header-based-auth): `Range: bytes=0-9`.
    #[test]
    fn s3_get_object_documented_vector() {
        let mut p = parts(
            "GET",
            "/test.txt",
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20991231T000000Z"),
                (
                    "authorization",
                    &placeholder_auth(
                        "us-east-1",
                        "s3",
                        "host;range;x-amz-content-sha256;x-amz-date",
                    ),
                ),
            ],
        );
        let done = resign(
            &mut p,
            "examplebucket.s3.amazonaws.com",
            PLACEHOLDER,
            &s3_docs_creds(),
            s3_docs_time(),
        )
        .unwrap();
        assert!(matches!(done, Resigned::Headers));
        assert_eq!(
            header(&p, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(header(&p, "x-amz-date"), "20130524T000000Z");
        assert!(p.headers.get("authorization").unwrap().is_sensitive());
        assert!(p.headers.get("x-amz-date").unwrap().is_sensitive());
        assert!(!p.headers.contains_key("x-amz-security-token"));
        assert_eq!(header(&p, "range"), "bytes=0-9");
    }

    /// S3 API reference, "Authenticating requests: using query parameters",
    /// the presigned GET of examplebucket/test.txt for 86400 s.
    #[test]
    fn s3_presigned_get_documented_vector() {
        let mut p = parts(
            "GET",
            &format!(
                "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential={PLACEHOLDER}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
                 &X-Amz-Security-Token={PLACEHOLDER_TOKEN}&X-Amz-Signature={FAKE_SIG}"
            ),
            &[],
        );
        let done = resign(
            &mut p,
            "examplebucket.s3.amazonaws.com",
            PLACEHOLDER,
            &s3_docs_creds(),
            s3_docs_time(),
        )
        .unwrap();
        assert!(matches!(done, Resigned::Query));
        assert_eq!(
            p.uri.to_string(),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    /// `count` bytes of `a` in 64 KiB and 1 KiB chunks, then the final one,
    /// each chunk header carrying the given signature, then `trailer`.
    fn chunked_body(signatures: [&str; 3], trailer: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (size, signature) in [(65536usize, signatures[0]), (1024, signatures[1])] {
            body.extend_from_slice(format!("{size:x};chunk-signature={signature}\r\n").as_bytes());
            body.extend(std::iter::repeat_n(b'a', size));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("0;chunk-signature={}\r\n", signatures[2]).as_bytes());
        body.extend_from_slice(trailer);
        body.extend_from_slice(b"\r\n");
        body
    }

    const SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    const CHUNK_SIGS: [&str; 3] = [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ];
    const TRAILER_SEED: &str = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e";
    const TRAILER_CHUNK_SIGS: [&str; 3] = [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ];
    const TRAILER_SIG: &str = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435";

    fn trailer(signature: &str) -> Vec<u8> {
        format!("x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:{signature}\r\n")
            .into_bytes()
    }

    /// The PUT of the S3 streaming examples, signed by the sandbox.
    fn chunked_put(mode: &str, extra: &[(&str, &str)], signed: &str) -> Parts {
        let auth = placeholder_auth("us-east-1", "s3", signed);
        let mut headers = vec![
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20991231T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("authorization", auth.as_str()),
            ("x-amz-content-sha256", mode),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
        ];
        headers.extend_from_slice(extra);
        parts("PUT", "/examplebucket/chunkObject.txt", &headers)
    }

    fn resign_chunked(mut p: Parts) -> (Parts, Box<ChunkResigner>) {
        let done = resign(
            &mut p,
            "s3.amazonaws.com",
            PLACEHOLDER,
            &s3_docs_creds(),
            s3_docs_time(),
        );
        match done {
            Ok(Resigned::Chunked(r)) => (p, r),
            other => panic!("{other:?}"),
        }
    }

    /// Feeds `body` in pieces of the given lengths (cycled) and returns the output.
    fn feed_in(r: &mut ChunkResigner, body: &[u8], pieces: &[usize]) -> Result<Vec<u8>, Refusal> {
        let mut out = BytesMut::new();
        let mut rest = body;
        for len in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*len).clamp(1, rest.len()));
            r.feed(now, &mut out)?;
            rest = later;
        }
        r.finish(&mut out)?;
        Ok(out.to_vec())
    }

    /// S3 API reference, "Signature calculation: transfer payload in multiple
    /// chunks" (sigv4-streaming): 66560 bytes of `a` in 64 KiB + 1 KiB chunks.
    #[test]
    fn s3_chunked_put_documented_vector() {
        let signed = "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;\
                      x-amz-decoded-content-length;x-amz-storage-class";
        let put = || chunked_put(STREAMING, &[], signed);
        let (p, _) = resign_chunked(put());
        assert_eq!(signature(&p), SEED);
        let input = chunked_body([FAKE_SIG; 3], b"");
        let expected = chunked_body(CHUNK_SIGS, b"");
        assert_eq!(input.len(), 66824, "the documented Content-Length");
        for pieces in [
            &[usize::MAX][..],
            &[1],
            &[2],
            &[3],
            &[7, 1, 64],
            &[1000],
            &[65535],
            &[65536, 1],
        ] {
            let (_, mut r) = resign_chunked(put());
            let out = feed_in(&mut r, &input, pieces).unwrap();
            assert!(out == expected, "pieces {pieces:?}");
        }
        // One split anywhere near the chunk boundaries.
        let header = 88;
        let boundaries = (0..200)
            .chain(header + 65536 - 50..header + 65536 + 150)
            .chain(input.len() - 200..input.len());
        for split in boundaries {
            let (_, mut r) = resign_chunked(put());
            let out = feed_in(&mut r, &input, &[split, usize::MAX]).unwrap();
            assert!(out == expected, "split at {split}");
        }
    }

    /// S3 API reference, "Signature calculation: including trailing headers"
    /// (sigv4-streaming-trailers): the same chunks and a CRC32C trailer.
    #[test]
    fn s3_chunked_put_with_trailer_documented_vector() {
        let signed = "content-encoding;host;x-amz-content-sha256;x-amz-date;\
                      x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer";
        let put = || {
            chunked_put(
                STREAMING_TRAILER,
                &[("x-amz-trailer", "x-amz-checksum-crc32c")],
                signed,
            )
        };
        let (p, _) = resign_chunked(put());
        assert_eq!(signature(&p), TRAILER_SEED);
        let input = chunked_body([FAKE_SIG; 3], &trailer(FAKE_SIG));
        let expected = chunked_body(TRAILER_CHUNK_SIGS, &trailer(TRAILER_SIG));
        for pieces in [&[usize::MAX][..], &[1], &[5], &[4096]] {
            let (_, mut r) = resign_chunked(put());
            let out = feed_in(&mut r, &input, pieces).unwrap();
            assert!(out == expected, "pieces {pieces:?}");
        }
    }

    // ---- The SigV4 test suite (aws-signing-test-suite/v4, from aws-c-auth) ----

    fn suite_resign(p: &mut Parts, creds: &SigningCreds) -> Resigned {
        resign(p, "example.amazonaws.com", PLACEHOLDER, creds, suite_time()).unwrap()
    }

    #[test]
    fn suite_get_vanilla() {
        let auth = placeholder_auth("us-east-1", "service", "host;x-amz-date");
        let mut p = parts(
            "GET",
            "/",
            &[("host", "example.amazonaws.com"), ("authorization", &auth)],
        );
        assert!(matches!(
            suite_resign(&mut p, &suite_creds(None)),
            Resigned::Headers
        ));
        assert_eq!(
            header(&p, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The placeholder token the client signed becomes the real one.
    #[test]
    fn suite_get_vanilla_with_session_token() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let auth = placeholder_auth(
            "us-east-1",
            "service",
            "host;x-amz-date;x-amz-security-token",
        );
        let mut p = parts(
            "GET",
            "/",
            &[
                ("authorization", &auth),
                ("x-amz-security-token", PLACEHOLDER_TOKEN),
            ],
        );
        assert!(matches!(
            suite_resign(&mut p, &suite_creds(Some(token))),
            Resigned::Headers
        ));
        assert_eq!(
            signature(&p),
            "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
        let tokens: Vec<_> = p.headers.get_all("x-amz-security-token").iter().collect();
        assert_eq!(tokens, [token]);
        assert!(tokens[0].is_sensitive());
        assert!(
            header(&p, "authorization")
                .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,")
        );
    }

    #[test]
    fn suite_presigned_get_with_session_token() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let mut p = parts(
            "GET",
            &format!(
                "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={PLACEHOLDER}%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
                 &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600\
                 &X-Amz-Security-Token={PLACEHOLDER_TOKEN}&X-Amz-Signature={FAKE_SIG}"
            ),
            &[],
        );
        assert!(matches!(
            suite_resign(&mut p, &suite_creds(Some(token))),
            Resigned::Query
        ));
        let query = p.uri.query().unwrap();
        assert!(
            query.ends_with(&format!(
                "&X-Amz-Signature=7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c\
                 &X-Amz-Security-Token={token}"
            )),
            "{query}"
        );
        assert!(!query.contains(PLACEHOLDER_TOKEN) && !query.contains(PLACEHOLDER));
    }

    /// The client's other parameters stay, byte for byte and in order.
    #[test]
    fn suite_get_vanilla_query_order_key_case() {
        let auth = placeholder_auth("us-east-1", "service", "host;x-amz-date");
        let mut p = parts(
            "GET",
            "/?Param2=value2&Param1=value1",
            &[("authorization", &auth)],
        );
        suite_resign(&mut p, &suite_creds(None));
        assert_eq!(p.uri, "/?Param2=value2&Param1=value1");
        assert_eq!(
            signature(&p),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn suite_presigned_post_vanilla_query_keeps_other_params_first() {
        let mut p = parts(
            "POST",
            &format!(
                "/?Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential={PLACEHOLDER}%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
                 &X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={FAKE_SIG}"
            ),
            &[],
        );
        suite_resign(&mut p, &suite_creds(None));
        assert_eq!(
            p.uri,
            "/?Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
             &X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=a9ef26247f293bffe40eeff86a0480ba8c14d31503b2e0c3399e3a16bf1a3682"
        );
    }

    /// A non-S3 body hash given in x-amz-content-sha256 is used as given.
    #[test]
    fn suite_post_x_www_form_urlencoded_with_content_sha256() {
        let auth = placeholder_auth(
            "us-east-1",
            "service",
            "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
        );
        let mut p = parts(
            "POST",
            "/",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "13"),
                (
                    "x-amz-content-sha256",
                    "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                ),
                ("authorization", &auth),
            ],
        );
        assert!(matches!(
            suite_resign(&mut p, &suite_creds(None)),
            Resigned::Headers
        ));
        assert_eq!(
            signature(&p),
            "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
        );
    }

    /// Without x-amz-content-sha256, a body the caller holds is hashed.
    #[test]
    fn suite_presigned_post_x_www_form_urlencoded_buffered() {
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "13"),
        ];
        let uri = format!(
            "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={PLACEHOLDER}%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
             &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost&X-Amz-Expires=3600\
             &X-Amz-Signature={FAKE_SIG}"
        );
        let mut p = parts("POST", &uri, &headers);
        let creds = suite_creds(None);
        let done = resign_buffered(
            &mut p,
            b"Param1=value1",
            "example.amazonaws.com",
            PLACEHOLDER,
            &creds,
            suite_time(),
        );
        assert!(matches!(done, Ok(Resigned::Query)));
        assert!(
            p.uri.query().unwrap().ends_with(
                "X-Amz-Signature=89a40deed0f26f9461242825a082d2222717248abc7ab41f552ad84a94ad46e9"
            ),
            "{}",
            p.uri
        );
        // Not buffered, the same request is refused: its hash is unknown.
        let p = parts("POST", &uri, &headers);
        assert!(matches!(
            refused(p, "example.amazonaws.com", &creds),
            Refusal::BodyNotHashed { .. }
        ));
    }

    /// The path outside S3 is double-encoded (aws-sigv4's own suite case,
    /// signed with its test key).
    #[test]
    fn double_encode_path_outside_s3() {
        let creds = SigningCreds {
            access_key_id: "ANOTREAL".into(),
            secret_access_key: "notrealrnrELgWzOk3IfjzDKtFBhDby".into(),
            session_token: None,
        };
        let auth = placeholder_auth("us-east-1", "service", "host;x-amz-date");
        let mut p = parts(
            "POST",
            "/test/@connections/JBDvjfGEIAMCERw%3D",
            &[("authorization", &auth)],
        );
        resign(
            &mut p,
            "tj9n5r0m12.execute-api.us-east-1.amazonaws.com",
            PLACEHOLDER,
            &creds,
            suite_time(),
        )
        .unwrap();
        assert_eq!(
            signature(&p),
            "57d157672191bac40bae387e48bbe14b15303c001fdbb01f4abf295dccb09705"
        );
    }

    /// S3 signs the path as sent: single encoding, `//` and `..` kept. The
    /// expected signature is computed here from the SigV4 recipe.
    #[test]
    fn s3_signs_the_path_as_sent() {
        use sha2::{Digest, Sha256};
        let path = "/examplebucket/a%3Db//c/../d.txt";
        let auth = placeholder_auth("us-east-1", "s3", "host;x-amz-content-sha256;x-amz-date");
        let mut p = parts(
            "GET",
            path,
            &[("x-amz-content-sha256", UNSIGNED), ("authorization", &auth)],
        );
        resign(
            &mut p,
            "s3.amazonaws.com",
            PLACEHOLDER,
            &s3_docs_creds(),
            s3_docs_time(),
        )
        .unwrap();
        let canonical = format!(
            "GET\n{path}\n\nhost:s3.amazonaws.com\nx-amz-content-sha256:{UNSIGNED}\nx-amz-date:20130524T000000Z\n\n\
             host;x-amz-content-sha256;x-amz-date\n{UNSIGNED}"
        );
        let hash = Sha256::digest(canonical.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let sts = format!(
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n{hex}"
        );
        let key = v4::generate_signing_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            s3_docs_time(),
            "us-east-1",
            "s3",
        );
        assert_eq!(signature(&p), v4::calculate_signature(key, sts.as_bytes()));
    }

    // ---- Tokens, sensitivity, someone else's key ----

    #[test]
    fn another_key_is_not_ours() {
        let other =
            "AWS4-HMAC-SHA256 Credential=AKIAOTHERKEY00000000/20130524/us-east-1/s3/aws4_request, \
                     SignedHeaders=host;x-amz-date, Signature="
                .to_owned()
                + FAKE_SIG;
        let cases = [
            parts(
                "GET",
                "/",
                &[
                    ("authorization", &other),
                    ("x-amz-security-token", "theirs"),
                ],
            ),
            parts(
                "GET",
                &format!(
                    "/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAOTHERKEY00000000%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
                     &X-Amz-Date=20130524T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature={FAKE_SIG}"
                ),
                &[],
            ),
            parts("GET", "/", &[("authorization", "Bearer abc")]),
            parts("PUT", "/", &[("content-length", "5")]),
            parts(
                "POST",
                "/",
                &[("content-type", "application/x-www-form-urlencoded")],
            ),
        ];
        for mut p in cases {
            let before = snapshot(&p);
            let done = resign(
                &mut p,
                "s3.amazonaws.com",
                PLACEHOLDER,
                &s3_docs_creds(),
                s3_docs_time(),
            );
            assert!(matches!(done, Ok(Resigned::NotSigned)), "{done:?}");
            assert_eq!(snapshot(&p), before);
        }
        let mut p = parts(
            "GET",
            "/",
            &[(
                "authorization",
                &placeholder_auth("us-east-1", "s3", "host"),
            )],
        );
        let done = resign(
            &mut p,
            "s3.amazonaws.com",
            "",
            &s3_docs_creds(),
            s3_docs_time(),
        );
        assert!(matches!(done, Ok(Resigned::NotSigned)));
    }

    /// A token sent but left unsigned stays unsigned (the client's service
    /// wants it so), yet is the real one.
    #[test]
    fn an_unsigned_token_is_replaced_and_stays_unsigned() {
        let auth = placeholder_auth("us-east-1", "service", "host;x-amz-date");
        let mut p = parts(
            "GET",
            "/",
            &[
                ("authorization", &auth),
                ("x-amz-security-token", PLACEHOLDER_TOKEN),
            ],
        );
        suite_resign(&mut p, &suite_creds(Some("real-token")));
        assert_eq!(header(&p, "x-amz-security-token"), "real-token");
        assert!(header(&p, "authorization").contains("SignedHeaders=host;x-amz-date,"));
        // Without the token, the signature is get-vanilla's.
        assert_eq!(
            signature(&p),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn a_real_token_is_added_and_signed_when_the_client_had_none() {
        let auth = placeholder_auth("us-east-1", "service", "host;x-amz-date");
        let mut p = parts("GET", "/", &[("authorization", &auth)]);
        suite_resign(&mut p, &suite_creds(Some("real-token")));
        assert_eq!(header(&p, "x-amz-security-token"), "real-token");
        assert!(
            p.headers
                .get("x-amz-security-token")
                .unwrap()
                .is_sensitive()
        );
        assert!(
            header(&p, "authorization")
                .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,")
        );
    }

    #[test]
    fn the_placeholder_token_goes_when_the_real_creds_have_none() {
        let auth = placeholder_auth(
            "us-east-1",
            "service",
            "host;x-amz-date;x-amz-security-token",
        );
        let mut p = parts(
            "GET",
            "/",
            &[
                ("authorization", &auth),
                ("x-amz-security-token", PLACEHOLDER_TOKEN),
                ("X-Amz-Security-Token", PLACEHOLDER_TOKEN),
            ],
        );
        suite_resign(&mut p, &suite_creds(None));
        assert!(!p.headers.contains_key("x-amz-security-token"));
        assert_eq!(
            signature(&p),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        let all: Vec<u8> = p
            .headers
            .iter()
            .flat_map(|(_, v)| v.as_bytes().to_vec())
            .collect();
        assert!(!contains(&all, PLACEHOLDER_TOKEN.as_bytes()));
        assert!(!contains(&all, PLACEHOLDER.as_bytes()));
    }

    #[test]
    fn a_presigned_url_keeps_only_its_remaining_time() {
        let uri = |date: &str, expires: u64| {
            format!(
                "/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={PLACEHOLDER}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host&X-Amz-Signature={FAKE_SIG}"
            )
        };
        let mut p = parts("GET", &uri("20130523T230000Z", 7200), &[]);
        resign(
            &mut p,
            "b.s3.amazonaws.com",
            PLACEHOLDER,
            &s3_docs_creds(),
            s3_docs_time(),
        )
        .unwrap();
        assert!(
            p.uri
                .query()
                .unwrap()
                .contains("&X-Amz-Date=20130524T000000Z&X-Amz-Expires=3600&")
        );
        // Signed "in the future" by a skewed clock: no longer than asked.
        let mut p = parts("GET", &uri("20130524T010000Z", 600), &[]);
        resign(
            &mut p,
            "b.s3.amazonaws.com",
            PLACEHOLDER,
            &s3_docs_creds(),
            s3_docs_time(),
        )
        .unwrap();
        assert!(p.uri.query().unwrap().contains("&X-Amz-Expires=600&"));
        let p = parts("GET", &uri("20130523T000000Z", 3600), &[]);
        assert!(matches!(
            refused(p, "b.s3.amazonaws.com", &s3_docs_creds()),
            Refusal::Expired { .. }
        ));
    }

    #[test]
    fn a_presigned_token_header_goes_and_a_real_token_joins_the_query() {
        let mut p = parts(
            "GET",
            &format!(
                "/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={PLACEHOLDER}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20130524T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature={FAKE_SIG}"
            ),
            &[("x-amz-security-token", PLACEHOLDER_TOKEN)],
        );
        let creds = SigningCreds {
            session_token: Some("a+real/token=".into()),
            ..s3_docs_creds()
        };
        resign(
            &mut p,
            "b.s3.amazonaws.com",
            PLACEHOLDER,
            &creds,
            s3_docs_time(),
        )
        .unwrap();
        assert!(!p.headers.contains_key("x-amz-security-token"));
        assert!(
            p.uri
                .query()
                .unwrap()
                .ends_with("&X-Amz-Security-Token=a%2Breal%2Ftoken%3D")
        );
    }

    #[test]
    fn unsigned_payload_modes_leave_the_body_alone() {
        for mode in [UNSIGNED, UNSIGNED_TRAILER] {
            let auth = placeholder_auth("us-east-1", "s3", "host;x-amz-content-sha256;x-amz-date");
            let mut p = parts(
                "PUT",
                "/b/k",
                &[
                    ("x-amz-content-sha256", mode),
                    ("content-length", "9"),
                    ("authorization", &auth),
                ],
            );
            let done = resign(
                &mut p,
                "s3.amazonaws.com",
                PLACEHOLDER,
                &s3_docs_creds(),
                s3_docs_time(),
            );
            assert!(matches!(done, Ok(Resigned::Headers)), "{mode}: {done:?}");
            assert_eq!(header(&p, "x-amz-content-sha256"), mode);
        }
    }

    #[test]
    fn a_signed_header_the_request_lacks_is_left_out() {
        let auth = placeholder_auth("us-east-1", "service", "connection;host;x-amz-date");
        let mut p = parts("GET", "/", &[("authorization", &auth)]);
        suite_resign(&mut p, &suite_creds(None));
        assert_eq!(
            signature(&p),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    // ---- Refusals ----

    #[test]
    fn what_is_refused_in_the_head() {
        let creds = s3_docs_creds();
        let auth = |s: &str| format!("AWS4-HMAC-SHA256 {s}");
        let good_cred = format!("Credential={PLACEHOLDER}/20130524/us-east-1/s3/aws4_request");
        let sig = format!("Signature={FAKE_SIG}");
        let malformed = [
            auth(&format!("{good_cred}, SignedHeaders=host")),
            auth(&format!("{good_cred}, {sig}")),
            auth(&format!(
                "Credential={PLACEHOLDER}/20130524/us-east-1/s3, SignedHeaders=host, {sig}"
            )),
            auth(&format!(
                "Credential={PLACEHOLDER}X/20130524/us-east-1/s3/aws4_request, SignedHeaders=host, {sig}"
            )),
            auth(&format!("{good_cred}, SignedHeaders=Host, {sig}")),
            auth(&format!(
                "{good_cred}, SignedHeaders=host;authorization, {sig}"
            )),
            auth(&format!("{good_cred}, SignedHeaders=host, Signature=abc")),
            auth(&format!("{good_cred}, SignedHeaders=host, {sig}, {sig}")),
            auth(&format!("{good_cred}, SignedHeaders=host, {sig}, Extra=1")),
            format!("AWS4-HMAC-SHA256{good_cred}, SignedHeaders=host, {sig}"),
        ];
        for value in malformed {
            let p = parts("GET", "/", &[("authorization", &value)]);
            let err = refused(p, "s3.amazonaws.com", &creds);
            assert!(
                matches!(err, Refusal::MalformedAuthorization(_)),
                "{value}: {err:?}"
            );
        }
        let cases: Vec<(Parts, Expect)> = vec![
            (
                parts(
                    "GET",
                    "/",
                    &[(
                        "authorization",
                        &format!(
                            "AWS4-ECDSA-P256-SHA256 Credential={PLACEHOLDER}/20130524/s3/aws4_request, SignedHeaders=host, {sig}"
                        ),
                    )],
                ),
                |e| matches!(e, Refusal::SigV4a),
            ),
            (
                parts(
                    "GET",
                    "/",
                    &[(
                        "authorization",
                        &format!("AWS {PLACEHOLDER}:frJIUN8DYpKDtOLCwo//yllqDzg="),
                    )],
                ),
                |e| matches!(e, Refusal::SigV2),
            ),
            (
                parts(
                    "GET",
                    "/",
                    &[("authorization", &format!("Basic {PLACEHOLDER}"))],
                ),
                |e| matches!(e, Refusal::UnknownScheme),
            ),
            (
                parts(
                    "GET",
                    "/",
                    &[
                        (
                            "authorization",
                            &placeholder_auth("us-east-1", "s3", "host"),
                        ),
                        ("authorization", "Bearer x"),
                    ],
                ),
                |e| matches!(e, Refusal::SeveralAuthorizations),
            ),
            (
                parts(
                    "GET",
                    &format!("/?AWSAccessKeyId={PLACEHOLDER}&Expires=1&Signature=x"),
                    &[],
                ),
                |e| matches!(e, Refusal::SigV2),
            ),
            (
                parts("GET", "/", &[("x-amz-meta-key", PLACEHOLDER)]),
                |e| matches!(e, Refusal::PlaceholderElsewhere(p) if p == "the x-amz-meta-key header"),
            ),
            (
                parts(
                    "GET",
                    &format!("/?list-type=2&prefix={PLACEHOLDER}"),
                    &[(
                        "authorization",
                        &placeholder_auth("us-east-1", "s3", "host"),
                    )],
                ),
                |e| matches!(e, Refusal::PlaceholderElsewhere(p) if p == "the URL parameter prefix"),
            ),
            (
                parts(
                    "GET",
                    &format!(
                        "/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={PLACEHOLDER}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
                         &X-Amz-Date=20130524T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature={FAKE_SIG}"
                    ),
                    &[("x-amz-meta-k", PLACEHOLDER)],
                ),
                |e| matches!(e, Refusal::PlaceholderElsewhere(p) if p == "the x-amz-meta-k header"),
            ),
            (
                parts("GET", &format!("/{PLACEHOLDER}/x"), &[]),
                |e| matches!(e, Refusal::PlaceholderElsewhere(p) if p == "the URL"),
            ),
            (
                parts(
                    "POST",
                    "/bucket",
                    &[("content-type", "multipart/form-data; boundary=x")],
                ),
                |e| matches!(e, Refusal::PostForm),
            ),
            (
                parts(
                    "PUT",
                    &format!(
                        "/k?X-Amz-Credential={PLACEHOLDER}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                    ),
                    &[(
                        "authorization",
                        &placeholder_auth("us-east-1", "s3", "host"),
                    )],
                ),
                |e| matches!(e, Refusal::TwoSignatures),
            ),
            (
                parts(
                    "PUT",
                    "/k",
                    &[
                        ("x-amz-content-sha256", "MD5-PLEASE"),
                        (
                            "authorization",
                            &placeholder_auth("us-east-1", "s3", "host"),
                        ),
                    ],
                ),
                |e| matches!(e, Refusal::UnknownPayload(v) if v == "MD5-PLEASE"),
            ),
            (
                parts(
                    "PUT",
                    "/k",
                    &[
                        (
                            "x-amz-content-sha256",
                            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
                        ),
                        (
                            "authorization",
                            &placeholder_auth("us-east-1", "s3", "host"),
                        ),
                    ],
                ),
                |e| matches!(e, Refusal::SigV4a),
            ),
            (
                parts(
                    "PUT",
                    "/k",
                    &[
                        ("x-amz-content-sha256", UNSIGNED),
                        ("x-amz-content-sha256", UNSIGNED),
                        (
                            "authorization",
                            &placeholder_auth("us-east-1", "s3", "host"),
                        ),
                    ],
                ),
                |e| matches!(e, Refusal::UnknownPayload(_)),
            ),
            (
                parts(
                    "POST",
                    "/",
                    &[
                        ("content-length", "2"),
                        (
                            "authorization",
                            &placeholder_auth("us-east-1", "sts", "host;x-amz-date"),
                        ),
                    ],
                ),
                |e| matches!(e, Refusal::BodyNotHashed { service } if service == "sts"),
            ),
            (
                parts(
                    "POST",
                    "/",
                    &[
                        ("transfer-encoding", "chunked"),
                        (
                            "authorization",
                            &placeholder_auth("us-east-1", "sts", "host;x-amz-date"),
                        ),
                    ],
                ),
                |e| matches!(e, Refusal::BodyNotHashed { .. }),
            ),
            (
                parts(
                    "GET",
                    "/",
                    &[
                        ("x-custom", "caf\u{e9}"),
                        (
                            "authorization",
                            &placeholder_auth("us-east-1", "s3", "host;x-custom"),
                        ),
                    ],
                ),
                |e| matches!(e, Refusal::UnsignableHeader(h) if h == "x-custom"),
            ),
        ];
        for (p, expected) in cases {
            let err = refused(p, "s3.amazonaws.com", &creds);
            assert!(expected(&err), "{err:?}");
        }
    }

    #[test]
    fn what_is_refused_in_a_presigned_url() {
        let query = |algorithm: &str, expires: &str, extra: &str| {
            format!(
                "/k?X-Amz-Algorithm={algorithm}&X-Amz-Credential={PLACEHOLDER}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20130524T000000Z&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host&X-Amz-Signature={FAKE_SIG}{extra}"
            )
        };
        let creds = s3_docs_creds();
        let cases: Vec<QueryCase> = vec![
            (query(SIGV4A, "60", ""), &[], |e| {
                matches!(e, Refusal::SigV4a)
            }),
            (query("HMAC-MD5", "60", ""), &[], |e| {
                matches!(e, Refusal::MalformedQuery(_))
            }),
            (query(ALGORITHM, "0", ""), &[], |e| {
                matches!(e, Refusal::MalformedQuery(_))
            }),
            (query(ALGORITHM, "604801", ""), &[], |e| {
                matches!(e, Refusal::MalformedQuery(_))
            }),
            (
                query(ALGORITHM, "60", "&X-Amz-Date=20130524T000000Z"),
                &[],
                |e| matches!(e, Refusal::MalformedQuery(_)),
            ),
            (query(ALGORITHM, "60", "&x-amz-signature=00"), &[], |e| {
                matches!(e, Refusal::MalformedQuery(_))
            }),
            (
                format!(
                    "/k?X-Amz-Credential={PLACEHOLDER}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                ),
                &[],
                |e| matches!(e, Refusal::MalformedQuery(_)),
            ),
            (
                query(ALGORITHM, "60", ""),
                &[("x-amz-content-sha256", STREAMING)],
                |e| matches!(e, Refusal::PresignedChunks),
            ),
        ];
        for (uri, headers, expected) in cases {
            let err = refused(parts("PUT", &uri, headers), "s3.amazonaws.com", &creds);
            assert!(expected(&err), "{uri}: {err:?}");
        }
    }

    #[test]
    fn a_buffered_post_form_is_refused_only_with_the_placeholder_inside() {
        let p = || {
            parts(
                "POST",
                "/bucket",
                &[("content-type", "multipart/form-data; boundary=x")],
            )
        };
        let creds = s3_docs_creds();
        let form = format!(
            "--x\r\nContent-Disposition: form-data; name=\"X-Amz-Credential\"\r\n\r\n{PLACEHOLDER}/20130524/us-east-1/s3/aws4_request\r\n--x--\r\n"
        );
        let done = resign_buffered(
            &mut p(),
            form.as_bytes(),
            "b.s3.amazonaws.com",
            PLACEHOLDER,
            &creds,
            s3_docs_time(),
        );
        assert!(matches!(done, Err(Refusal::PostForm)));
        let done = resign_buffered(
            &mut p(),
            b"--x--\r\n",
            "b.s3.amazonaws.com",
            PLACEHOLDER,
            &creds,
            s3_docs_time(),
        );
        assert!(matches!(done, Ok(Resigned::NotSigned)));
    }

    // ---- aws-chunked framing ----

    fn fresh_resigner(mode: &str) -> Box<ChunkResigner> {
        let signed = "content-encoding;host;x-amz-content-sha256;x-amz-date";
        resign_chunked(chunked_put(mode, &[], signed)).1
    }

    fn chunk_err(mode: &str, body: &[u8]) -> Refusal {
        let mut r = fresh_resigner(mode);
        let whole = feed_in(&mut r, body, &[usize::MAX]).unwrap_err();
        let mut r = fresh_resigner(mode);
        let bytewise = feed_in(&mut r, body, &[1]).unwrap_err();
        assert_eq!(whole, bytewise);
        // Refused once, refused for good.
        assert!(r.feed(b"0", &mut BytesMut::new()).is_err());
        whole
    }

    #[test]
    fn chunk_framing_errors_are_refused() {
        let sig = FAKE_SIG;
        let cases: Vec<(&str, String, Expect)> = vec![
            (
                STREAMING,
                format!("3;chunk-signature={sig}\r\nabcX\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING,
                format!("3;chunk-signature={sig}\nabc\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING,
                format!("3x;chunk-signature={sig}\r\nabc\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING,
                format!("+3;chunk-signature={sig}\r\nabc\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (STREAMING, "3;chunk-signature=abc\r\nabc\r\n".into(), |e| {
                matches!(e, Refusal::ChunkFraming(_))
            }),
            (
                STREAMING,
                format!("3;chunk-signature={sig};x=1\r\nabc\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (STREAMING, "3\r\nabc\r\n".into(), |e| {
                matches!(e, Refusal::ChunkFraming(_))
            }),
            (
                STREAMING,
                format!("100001;chunk-signature={sig}\r\n"),
                |e| matches!(e, Refusal::ChunkTooLarge(0x100001)),
            ),
            (
                STREAMING,
                format!("fffffffffffffffff;chunk-signature={sig}\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (STREAMING, "1".repeat(MAX_LINE + 1), |e| {
                matches!(e, Refusal::LineTooLong)
            }),
            (STREAMING, format!("3;chunk-signature={sig}\r\nab"), |e| {
                matches!(e, Refusal::Truncated)
            }),
            (STREAMING, format!("0;chunk-signature={sig}\r\n"), |e| {
                matches!(e, Refusal::Truncated)
            }),
            (
                STREAMING,
                format!("0;chunk-signature={sig}\r\n\r\nX"),
                |e| matches!(e, Refusal::TrailingData),
            ),
            (
                STREAMING,
                format!("0;chunk-signature={sig}\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING_TRAILER,
                format!("0;chunk-signature={sig}\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING_TRAILER,
                format!(
                    "0;chunk-signature={sig}\r\nx-amz-trailer-signature:{sig}\r\nx-a:b\r\n\r\n"
                ),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING_TRAILER,
                format!("0;chunk-signature={sig}\r\nx-amz-trailer-signature:abc\r\n\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING_TRAILER,
                format!("0;chunk-signature={sig}\r\nno colon\r\n\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING_TRAILER,
                format!("0;chunk-signature={sig}\r\nbad name:x\r\n\r\n"),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
            (
                STREAMING_TRAILER,
                format!(
                    "0;chunk-signature={sig}\r\n{}",
                    "x-a:b\r\n".repeat(MAX_TRAILERS + 1)
                ),
                |e| matches!(e, Refusal::ChunkFraming(_)),
            ),
        ];
        for (mode, body, expected) in cases {
            let err = chunk_err(mode, body.as_bytes());
            assert!(expected(&err), "{body:?}: {err:?}");
        }
    }

    #[test]
    fn a_chunk_of_the_largest_size_and_the_longest_line_pass() {
        let mut body = format!("{MAX_CHUNK:x};chunk-signature={FAKE_SIG}\r\n").into_bytes();
        body.extend(std::iter::repeat_n(b'z', MAX_CHUNK));
        body.extend_from_slice(format!("\r\n0;chunk-signature={FAKE_SIG}\r\n").as_bytes());
        let value = "v".repeat(MAX_LINE - 4);
        body.extend_from_slice(
            format!("x-a:{value}\r\nx-amz-trailer-signature:{FAKE_SIG}\r\n\r\n").as_bytes(),
        );
        let mut r = fresh_resigner(STREAMING_TRAILER);
        let out = feed_in(&mut r, &body, &[100_000]).unwrap();
        assert_eq!(out.len(), body.len());
        assert!(!contains(&out, FAKE_SIG.as_bytes()));
    }

    /// A test body: frames handed out one by one, then HTTP trailers.
    struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn drain<B: Body<Data = Bytes, Error = BoxError>>(
        body: B,
    ) -> (Vec<u8>, Option<BoxError>, bool) {
        let mut body = std::pin::pin!(body);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut data, mut trailers) = (Vec::new(), false);
        loop {
            match body.as_mut().poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers |= f.is_trailers(),
                },
                Poll::Ready(Some(Err(e))) => return (data, Some(e), trailers),
                Poll::Ready(None) => return (data, None, trailers),
                Poll::Pending => panic!("the test body is never pending"),
            }
        }
    }

    #[test]
    fn chunk_body_streams_the_documented_vector() {
        let signed = "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;\
                      x-amz-decoded-content-length;x-amz-storage-class";
        let (_, r) = resign_chunked(chunked_put(STREAMING, &[], signed));
        let input = chunked_body([FAKE_SIG; 3], b"");
        let mut frames: std::collections::VecDeque<_> = input
            .chunks(5000)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        frames.push_back(Ok(Frame::trailers(HeaderMap::new())));
        let body = ChunkBody::new(Frames(frames), *r);
        assert_eq!(body.size_hint().exact(), None);
        let (out, err, trailers) = drain(body);
        assert!(err.is_none(), "{err:?}");
        assert!(trailers);
        assert!(out == chunked_body(CHUNK_SIGS, b""));
    }

    #[test]
    fn chunk_body_ends_in_an_error_on_a_truncated_body() {
        let (_, r) = resign_chunked(chunked_put(STREAMING, &[], "host"));
        let frames = [Ok(Frame::data(Bytes::from(format!(
            "3;chunk-signature={FAKE_SIG}\r\nab"
        ))))];
        let (out, err, _) = drain(ChunkBody::new(Frames(frames.into()), *r));
        assert!(out.is_empty());
        let err = err.unwrap();
        assert_eq!(err.downcast_ref::<Refusal>(), Some(&Refusal::Truncated));
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!(
            "{:?} {:?}",
            fresh_resigner(STREAMING),
            suite_creds(Some("tok-secret"))
        );
        assert!(
            !shown.contains("wJalr") && !shown.contains("tok-secret"),
            "{shown}"
        );
    }

    #[test]
    fn fuzz_seeds_sigv4() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/sigv4");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            for len in 0..=data.len() {
                fuzzing::fuzz_check(&data[..len]);
            }
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} seeds in {dir}");
    }
}
