//! Streaming byte-string substitution: placeholder → real token in what the
//! agent sends, real token → placeholder in what comes back, so the agent
//! never holds a credential.
//!
//! Matching is leftmost-longest (as a regex engine would: at the earliest
//! position, the longest pattern wins), and the streaming forms give exactly
//! the output of [`Substitutions::apply`] on the whole input however it is cut
//! into chunks, holding back at most `max_from_len() - 1` bytes in between.
//!
//! Replacements and held-back bytes are zeroed on drop. The patterns are
//! copied into the `aho-corasick` automaton, which does not zero its memory:
//! in the response direction the patterns are real tokens, so an automaton
//! should live no longer than the credentials it was built from.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use zeroize::Zeroizing;

/// A set of `from → to` byte-string replacements, compiled once and shared
/// (behind an [`Arc`]) by every body that needs them.
pub struct Substitutions {
    automaton: AhoCorasick,
    /// Indexed by the automaton's pattern id, as are the replacements.
    patterns: Vec<Zeroizing<Vec<u8>>>,
    replacements: Vec<Zeroizing<Vec<u8>>>,
    max_from_len: usize,
    changes_length: bool,
}

impl fmt::Debug for Substitutions {
    /// Counts only: both sides of a pair may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Substitutions")
            .field("pairs", &self.replacements.len())
            .field("max_from_len", &self.max_from_len)
            .field("changes_length", &self.changes_length)
            .finish_non_exhaustive()
    }
}

impl Substitutions {
    /// pairs: (from, to). Empty `from` entries are ignored (they would match
    /// everywhere). Returns `None` if there are no non-empty pairs. If two
    /// pairs share a `from`, the first one wins.
    ///
    /// # Panics
    ///
    /// If the automaton exceeds `aho-corasick`'s limits (over 2^31 states,
    /// gigabytes of patterns). Failing closed there is deliberate: carrying
    /// on without substitutions could pass a real token to the agent.
    pub fn new(pairs: Vec<(Vec<u8>, Zeroizing<Vec<u8>>)>) -> Option<Self> {
        let mut patterns = Vec::with_capacity(pairs.len());
        let mut replacements = Vec::with_capacity(pairs.len());
        for (from, to) in pairs {
            let from = Zeroizing::new(from);
            if !from.is_empty() {
                patterns.push(from);
                replacements.push(to);
            }
        }
        let max_from_len = patterns.iter().map(|p| p.len()).max()?;
        let changes_length = patterns
            .iter()
            .zip(&replacements)
            .any(|(from, to)| from.len() != to.len());
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|p| p.as_slice()))
            .expect("substitution patterns within aho-corasick's limits");
        Some(Substitutions {
            automaton,
            patterns,
            replacements,
            max_from_len,
            changes_length,
        })
    }

    /// The `(from, to)` pairs, copied (to build a larger set from them).
    pub fn pairs(&self) -> impl Iterator<Item = (Vec<u8>, Zeroizing<Vec<u8>>)> + '_ {
        self.patterns
            .iter()
            .zip(&self.replacements)
            .map(|(from, to)| (from.to_vec(), to.clone()))
    }

    /// Longest `from`.
    pub fn max_from_len(&self) -> usize {
        self.max_from_len
    }

    /// Whether lengths can change (any `from.len() != to.len()`): then a
    /// body's Content-Length no longer holds.
    pub fn changes_length(&self) -> bool {
        self.changes_length
    }

    /// Replaces all non-overlapping leftmost-longest matches in one buffer.
    /// Returns `None` when nothing matched (so callers can avoid a copy).
    pub fn apply(&self, input: &[u8]) -> Option<Vec<u8>> {
        self.automaton.find(input)?;
        let mut out = Vec::with_capacity(input.len());
        self.replace_into(input, usize::MAX, &mut out);
        Some(out)
    }

    /// [`apply`](Self::apply) for a `&str` (URL path and query, header
    /// values); `None` when nothing matched. Should a replacement split a
    /// UTF-8 sequence, the result is the lossy conversion.
    pub fn apply_str(&self, input: &str) -> Option<String> {
        let out = self.apply(input.as_bytes())?;
        Some(match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A streaming substituter sharing these substitutions.
    pub fn stream(self: &Arc<Self>) -> Streamer {
        Streamer {
            held: Zeroizing::new(Vec::with_capacity(2 * self.max_from_len)),
            subs: Arc::clone(self),
        }
    }

    /// The first position at which a match might run past the end of `len`
    /// available bytes (a match is at most `max_from_len` long). Before it,
    /// the leftmost-longest match is already decided.
    fn settled_limit(&self, len: usize) -> usize {
        (len + 1).saturating_sub(self.max_from_len)
    }

    /// Writes `hay` to `out` with replacements, up to the point where more
    /// input could change the result, and returns that point. Only matches
    /// starting before `settled` are taken: for those, any match starting at
    /// or before them lies wholly in `hay`, so a longer or earlier one cannot
    /// come with later bytes. Bytes before `settled` that no match covers go
    /// out as they are.
    fn replace_into(&self, hay: &[u8], settled: usize, out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        for m in self.automaton.find_iter(hay) {
            if m.start() >= settled {
                break;
            }
            out.extend_from_slice(&hay[pos..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            pos = m.end();
        }
        let end = pos.max(settled.min(hay.len()));
        out.extend_from_slice(&hay[pos..end]);
        end
    }
}

/// Chunked streaming: the output equals [`Substitutions::apply`] of the
/// concatenated input for any chunking, including a `from` split across
/// chunks. Holds back at most `max_from_len() - 1` bytes, never more.
pub struct Streamer {
    subs: Arc<Substitutions>,
    /// The unsettled tail. Its capacity (twice the longest pattern) is
    /// allocated up front and never exceeded, so it is never reallocated
    /// and zeroing it on drop leaves no stray copy of a partial token.
    held: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Streamer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streamer")
            .field("held_back", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Streamer {
    /// Feeds the next chunk, appending to `out` all output that no later
    /// input can change.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        // First settle the held-back tail, joined with just enough of the
        // chunk to decide any match starting in it: no need to copy the
        // whole chunk.
        while !self.held.is_empty() && !chunk.is_empty() {
            let held_len = self.held.len();
            let take = chunk.len().min(self.subs.max_from_len);
            self.held.extend_from_slice(&chunk[..take]);
            let limit = self.subs.settled_limit(self.held.len());
            let consumed = self.subs.replace_into(&self.held, limit, out);
            if consumed >= held_len {
                // Everything unsettled now lies in the chunk: rescan it there.
                chunk = &chunk[consumed - held_len..];
                self.held.clear();
            } else {
                self.held.drain(..consumed);
                chunk = &chunk[take..];
            }
        }
        if !chunk.is_empty() {
            let consumed = self
                .subs
                .replace_into(chunk, self.subs.settled_limit(chunk.len()), out);
            self.held.extend_from_slice(&chunk[consumed..]);
        }
        let free = self.releasable();
        out.extend_from_slice(&self.held[..free]);
        self.held.drain(..free);
    }

    /// How many of the held-back bytes no match can start at: before the
    /// first position where the tail and a pattern begin alike (the tail a
    /// prefix of the pattern, or the pattern of the tail). Those go out at
    /// once, so a short message (an SSE event) is not kept waiting for the
    /// next chunk when it cannot be the start of a pattern.
    fn releasable(&self) -> usize {
        let held = &self.held[..];
        (0..held.len())
            .find(|&i| {
                let tail = &held[i..];
                self.subs
                    .patterns
                    .iter()
                    .any(|p| p.starts_with(tail) || tail.starts_with(p))
            })
            .unwrap_or(held.len())
    }

    /// Ends the stream: appends the held-back tail, with any replacement it
    /// holds. The streamer is then empty and may be reused.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.subs.replace_into(&self.held, usize::MAX, out);
        self.held.clear();
    }

    /// How many bytes are held back, waiting for the next chunk.
    pub fn held_back(&self) -> usize {
        self.held.len()
    }

    /// [`push`](Self::push) for an owned chunk, without copying it when no
    /// held-back bytes are pending and it needs no replacement: the common
    /// case for large bodies.
    fn push_bytes(&mut self, chunk: Bytes) -> Bytes {
        if self.held.is_empty() {
            let limit = self.subs.settled_limit(chunk.len());
            let first = self.subs.automaton.find(chunk.as_ref());
            if first.is_none_or(|m| m.start() >= limit) {
                let end = limit.min(chunk.len());
                self.held.extend_from_slice(&chunk[end..]);
                let free = self.releasable();
                self.held.drain(..free);
                return chunk.slice(..end + free);
            }
        }
        let mut out = Vec::with_capacity(chunk.len() + self.held.len());
        self.push(&chunk, &mut out);
        Bytes::from(out)
    }

    /// The held-back tail, substituted, as a frame's data.
    fn finish_bytes(&mut self) -> Option<Bytes> {
        let mut out = Vec::new();
        self.finish(&mut out);
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

pin_project_lite::pin_project! {
    /// Wraps a body and applies the substitutions to its data frames,
    /// streaming; trailers pass through after the held-back tail is flushed.
    /// Errors pass through unchanged. The size hint is exact only if
    /// lengths cannot change and the inner hint is exact; otherwise unknown,
    /// so hyper does not send a wrong Content-Length.
    pub struct SubstBody<B> {
        #[pin]
        inner: B,
        streamer: Streamer,
        // A non-data frame waiting for the flushed tail to go out first.
        pending: Option<Frame<Bytes>>,
        inner_done: bool,
    }
}

impl<B> SubstBody<B> {
    pub fn new(inner: B, subs: Arc<Substitutions>) -> Self {
        SubstBody {
            inner,
            streamer: subs.stream(),
            pending: None,
            inner_done: false,
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for SubstBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubstBody")
            .field("inner", &self.inner)
            .field("streamer", &self.streamer)
            .finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes>> Body for SubstBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if let Some(frame) = this.pending.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if *this.inner_done {
                return Poll::Ready(None);
            }
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    *this.inner_done = true;
                    return Poll::Ready(this.streamer.finish_bytes().map(|d| Ok(Frame::data(d))));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let out = this.streamer.push_bytes(data);
                    // All held back: no empty frame, ask the inner body again.
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                // Trailers: the data before them must be complete first.
                Err(frame) => match this.streamer.finish_bytes() {
                    Some(tail) => {
                        *this.pending = Some(frame);
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    None => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none()
            && self.streamer.held_back() == 0
            && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.streamer.subs.changes_length() {
            return SizeHint::default();
        }
        let inner = if self.inner_done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        // Same-length replacements: what remains is the inner body's rest
        // plus what we hold back.
        let held = self.streamer.held_back() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

/// The check the `substitute` fuzz target runs (and the seed test in CI):
/// streaming, cut anyhow, gives the same bytes as [`Substitutions::apply`].
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Input layout: a header byte (pattern count, alphabet), then per
    /// pattern a length byte (`from` 1..=8, `to` 0..=11) and the bytes of
    /// both, then a chunking seed, then the haystack. With the small
    /// alphabet, patterns and haystack are mapped onto "abc" so that
    /// matches, near-matches and overlaps are common.
    pub fn fuzz_check(data: &[u8]) {
        let Some((&header, mut rest)) = data.split_first() else {
            return;
        };
        let small_alphabet = header & 0x80 != 0;
        let map = |bytes: &[u8]| -> Vec<u8> {
            if small_alphabet {
                bytes.iter().map(|b| b'a' + b % 3).collect()
            } else {
                bytes.to_vec()
            }
        };
        let mut pairs = Vec::new();
        for _ in 0..1 + header % 3 {
            let Some((&lens, after)) = rest.split_first() else {
                return;
            };
            let (from, after) = after.split_at(after.len().min(1 + usize::from(lens & 7)));
            let (to, after) = after.split_at(after.len().min(usize::from(lens >> 3) % 12));
            pairs.push((map(from), Zeroizing::new(to.to_vec())));
            rest = after;
        }
        let Some((&seed, hay)) = rest.split_first() else {
            return;
        };
        let hay = map(hay);
        let Some(subs) = Substitutions::new(pairs).map(Arc::new) else {
            return;
        };
        let expected = subs.apply(&hay).unwrap_or_else(|| hay.clone());
        let chunks = chunking(&hay, seed);
        assert_eq!(stream_slices(&subs, &chunks), expected, "push");
        assert_eq!(stream_bytes(&subs, &chunks), expected, "push_bytes");
    }

    /// Cuts `hay` into chunks of pseudo-random sizes (0 included) from `seed`.
    pub fn chunking(hay: &[u8], seed: u8) -> Vec<&[u8]> {
        let max = 1 + usize::from(seed % 16);
        let mut state = u32::from(seed) | 1;
        let mut chunks = Vec::new();
        let mut rest = hay;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let (chunk, after) = rest.split_at(rest.len().min(state as usize % (max + 1)));
            chunks.push(chunk);
            rest = after;
        }
        chunks
    }

    /// Streams through [`Streamer::push`], checking the hold-back bound.
    pub fn stream_slices(subs: &Arc<Substitutions>, chunks: &[&[u8]]) -> Vec<u8> {
        let mut streamer = subs.stream();
        let mut out = Vec::new();
        for chunk in chunks {
            streamer.push(chunk, &mut out);
            assert!(
                streamer.held_back() < subs.max_from_len(),
                "held back too much"
            );
        }
        streamer.finish(&mut out);
        out
    }

    /// Streams through the zero-copy path [`SubstBody`] uses.
    pub fn stream_bytes(subs: &Arc<Substitutions>, chunks: &[&[u8]]) -> Vec<u8> {
        let mut streamer = subs.stream();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&streamer.push_bytes(Bytes::copy_from_slice(chunk)));
            assert!(
                streamer.held_back() < subs.max_from_len(),
                "held back too much"
            );
        }
        out.extend(streamer.finish_bytes().unwrap_or_default());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzing::{stream_bytes, stream_slices};
    use super::*;
    use http::HeaderMap;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    fn subs(pairs: &[(&str, &str)]) -> Arc<Substitutions> {
        let pairs = pairs
            .iter()
            .map(|(from, to)| {
                (
                    from.as_bytes().to_vec(),
                    Zeroizing::new(to.as_bytes().to_vec()),
                )
            })
            .collect();
        Arc::new(Substitutions::new(pairs).unwrap())
    }

    /// `apply`, and streaming with every cut into two and three chunks and
    /// into single bytes, all give `expected`.
    fn check_all_chunkings(subs: &Arc<Substitutions>, input: &str, expected: &str) {
        let input = input.as_bytes();
        let expected = expected.as_bytes();
        let applied = subs.apply(input).unwrap_or_else(|| input.to_vec());
        assert_eq!(applied, expected, "apply");
        let check = |chunks: &[&[u8]]| {
            assert_eq!(stream_slices(subs, chunks), expected, "push {chunks:?}");
            assert_eq!(
                stream_bytes(subs, chunks),
                expected,
                "push_bytes {chunks:?}"
            );
        };
        for i in 0..=input.len() {
            check(&[&input[..i], &input[i..]]);
            for j in i..=input.len() {
                check(&[&input[..i], &input[i..j], &input[j..]]);
            }
        }
        check(&input.chunks(1).collect::<Vec<_>>());
    }

    const TOKEN: &str = "ghp_REALTOKEN0123456789";

    #[test]
    fn matches_at_start_and_end() {
        let s = subs(&[("moat-aa", TOKEN)]);
        check_all_chunkings(&s, "moat-aa says hi", &format!("{TOKEN} says hi"));
        check_all_chunkings(&s, "Bearer moat-aa", &format!("Bearer {TOKEN}"));
        check_all_chunkings(&s, "moat-aa", TOKEN);
    }

    #[test]
    fn adjacent_matches() {
        let s = subs(&[("moat-aa", "X"), ("moat-bb", "YY")]);
        check_all_chunkings(&s, "moat-aamoat-bbmoat-aa", "XYYX");
    }

    #[test]
    fn overlapping_candidates_prefer_the_longest() {
        let s = subs(&[("moat-aa", "SHORT"), ("moat-aab", "LONG")]);
        check_all_chunkings(&s, "moat-aab", "LONG");
        check_all_chunkings(&s, "moat-aac", "SHORTc");
        check_all_chunkings(&s, "x moat-aamoat-aab moat-aa", "x SHORTLONG SHORT");
        check_all_chunkings(&s, "moat-amoat-aab", "moat-aLONG");
    }

    #[test]
    fn an_earlier_long_match_beats_a_later_short_one() {
        // "cd" is complete while "abcdef" is still a candidate.
        let s = subs(&[("abcdef", "1"), ("cd", "2")]);
        check_all_chunkings(&s, "abcdef", "1");
        check_all_chunkings(&s, "abcdeg", "ab2eg");
    }

    #[test]
    fn a_match_split_across_three_chunks() {
        let s = subs(&[("moat-0123456789", "tok")]);
        let chunks: [&[u8]; 3] = [b"a moat-01", b"23456", b"789 b"];
        assert_eq!(stream_slices(&s, &chunks), b"a tok b");
        assert_eq!(stream_bytes(&s, &chunks), b"a tok b");
    }

    #[test]
    fn no_match_leaves_input_identical() {
        let s = subs(&[("moat-aa", TOKEN)]);
        assert_eq!(s.apply(b"moat-a moat-ab"), None);
        assert_eq!(s.apply_str("nothing here"), None);
        check_all_chunkings(&s, "moat-a moat-ab moat-", "moat-a moat-ab moat-");
        check_all_chunkings(&s, "", "");
    }

    #[test]
    fn lengths_grow_and_shrink() {
        let grow = subs(&[("p1", "a-much-longer-secret")]);
        check_all_chunkings(
            &grow,
            "[p1|p1]",
            "[a-much-longer-secret|a-much-longer-secret]",
        );
        let shrink = subs(&[("a-much-longer-secret", "p1")]);
        check_all_chunkings(
            &shrink,
            "[a-much-longer-secret|a-much-longer-secre]",
            "[p1|a-much-longer-secre]",
        );
        let remove = subs(&[("secret", "")]);
        check_all_chunkings(&remove, "secretsecret-secre-secret", "-secre-");
    }

    #[test]
    fn new_ignores_empty_patterns() {
        let none: Vec<(Vec<u8>, Zeroizing<Vec<u8>>)> =
            vec![(vec![], Zeroizing::new(b"x".to_vec()))];
        assert!(Substitutions::new(none).is_none());
        assert!(Substitutions::new(vec![]).is_none());
        let s = subs(&[("", "x"), ("abc", "xyz"), ("ab", "AB")]);
        assert_eq!(s.max_from_len(), 3);
        assert!(!s.changes_length());
        assert_eq!(s.apply(b"abcab").as_deref(), Some(b"xyzAB".as_slice()));
        assert!(subs(&[("abc", "xy")]).changes_length());
    }

    #[test]
    fn apply_str_replaces_in_text() {
        let s = subs(&[("moat-aa", TOKEN)]);
        assert_eq!(
            s.apply_str("/repos?token=moat-aa&x=é").as_deref(),
            Some(format!("/repos?token={TOKEN}&x=é").as_str())
        );
        // A pattern that cuts a UTF-8 sequence in two.
        let s = subs(&[("\u{e9}", "e")]);
        assert_eq!(s.apply_str("café").as_deref(), Some("cafe"));
        let half = Substitutions::new(vec![(vec![0xa9], Zeroizing::new(b"!".to_vec()))]).unwrap();
        assert_eq!(half.apply_str("é").as_deref(), Some("\u{fffd}!"));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let s = subs(&[("moat-aa", TOKEN)]);
        let mut streamer = s.stream();
        streamer.push(b"xx ghp_", &mut Vec::new());
        let shown = format!("{s:?} {streamer:?}");
        assert!(
            !shown.contains("moat-aa") && !shown.contains("ghp"),
            "{shown}"
        );
    }

    /// A body yielding prepared frames (and errors), with a chosen hint or,
    /// without one, the exact length of the data frames left.
    struct TestBody {
        frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
        hint: Option<SizeHint>,
    }

    impl TestBody {
        fn new(frames: Vec<Result<Frame<Bytes>, &'static str>>, hint: SizeHint) -> Self {
            TestBody {
                frames: frames.into(),
                hint: Some(hint),
            }
        }

        fn data(chunks: &[&'static str]) -> Self {
            let frames = chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))));
            TestBody {
                frames: frames.collect(),
                hint: None,
            }
        }
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(self.frames.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            self.hint.unwrap_or_else(|| {
                let data = self.frames.iter().flatten().filter_map(Frame::data_ref);
                SizeHint::with_exact(data.map(|d| d.len() as u64).sum())
            })
        }
    }

    /// Every frame the body yields, in order, polled without a runtime.
    fn frames(mut body: SubstBody<TestBody>) -> Vec<Result<Frame<Bytes>, &'static str>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            out.push(frame);
        }
        assert!(body.is_end_stream());
        out
    }

    fn trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers
    }

    #[test]
    fn body_substitutes_data_and_keeps_trailers_last() {
        let s = subs(&[("moat-aa", TOKEN)]);
        let inner = TestBody::new(
            vec![
                Ok(Frame::data(Bytes::from_static(b"token=moat-a"))),
                Ok(Frame::data(Bytes::from_static(b"a; x=moat"))),
                Ok(Frame::data(Bytes::from_static(b"-"))),
                Ok(Frame::data(Bytes::from_static(b"a"))),
                Ok(Frame::trailers(trailers())),
            ],
            SizeHint::default(),
        );
        let frames = frames(SubstBody::new(inner, s));
        let (last, data) = frames.split_last().unwrap();
        let mut body = Vec::new();
        for frame in data {
            let chunk = frame.as_ref().unwrap().data_ref().unwrap();
            assert!(!chunk.is_empty(), "empty data frame");
            body.extend_from_slice(chunk);
        }
        assert_eq!(body, format!("token={TOKEN}; x=moat-a").as_bytes());
        assert_eq!(last.as_ref().unwrap().trailers_ref(), Some(&trailers()));
    }

    #[tokio::test]
    async fn body_collects_like_apply() {
        let s = subs(&[("real-secret", "moat-0001")]);
        let inner = TestBody::data(&["{\"t\":\"real-", "secret\"}", "", "real-secret"]);
        let collected = SubstBody::new(inner, s).collect().await.unwrap();
        assert_eq!(collected.to_bytes(), "{\"t\":\"moat-0001\"}moat-0001");
    }

    #[test]
    fn body_passes_errors_through() {
        let s = subs(&[("moat-aa", TOKEN)]);
        let inner = TestBody::new(
            vec![
                Ok(Frame::data(Bytes::from_static(b"abc moat-"))),
                Err("boom"),
            ],
            SizeHint::default(),
        );
        let frames = frames(SubstBody::new(inner, s));
        assert_eq!(frames.len(), 3);
        // Only what may start a placeholder is held back.
        assert_eq!(frames[0].as_ref().unwrap().data_ref().unwrap(), "abc ");
        assert_eq!(frames[1].as_ref().unwrap_err(), &"boom");
        // The inner body ended after the error: the tail is flushed.
        assert_eq!(frames[2].as_ref().unwrap().data_ref().unwrap(), "moat-");
    }

    #[test]
    fn body_size_hint_is_exact_only_for_same_length() {
        let same = subs(&[("moat-aa", "ghp_abc")]);
        let body = SubstBody::new(TestBody::data(&["xx moat-", "aa"]), same.clone());
        assert_eq!(body.size_hint().exact(), Some(10));
        let mut body = std::pin::pin!(body);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(Ok(first))) = body.as_mut().poll_frame(&mut cx) else {
            panic!("no first frame");
        };
        assert_eq!(first.data_ref().unwrap(), "xx ");
        // Five bytes held back (they may start the pattern), two still inside.
        assert_eq!(body.size_hint().exact(), Some(7));

        let mut inexact = SizeHint::new();
        inexact.set_lower(3);
        let body = SubstBody::new(TestBody::new(vec![], inexact), same);
        assert_eq!(
            (body.size_hint().lower(), body.size_hint().upper()),
            (3, None)
        );

        let longer = subs(&[("moat-aa", TOKEN)]);
        let body = SubstBody::new(TestBody::data(&["xx moat-aa"]), longer);
        assert_eq!(
            (body.size_hint().lower(), body.size_hint().upper()),
            (0, None)
        );
    }

    #[test]
    fn fuzz_seeds_substitute() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/substitute");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            for len in 0..=data.len() {
                fuzzing::fuzz_check(&data[..len]);
            }
            seen += 1;
        }
        assert!(seen >= 4, "only {seen} seeds in {dir}");
    }
}
