//! Stand-ins for the model APIs three agent CLIs call in non-interactive
//! mode — Claude Code (`claude -p`, api.anthropic.com), Codex (`codex exec`,
//! api.openai.com Responses API) and the Gemini CLI (`gemini -p`,
//! generativelanguage.googleapis.com) — so the real CLIs can run end to end
//! against loopback. Each answers only the real key it was built with (a 401
//! in the API's own error shape otherwise) and streams `reply` back in the
//! API's SSE shape (the whole stream as one body).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::{Handler, Reply, Seen, StubServer, TestCa};

const SSE: &str = "text/event-stream";
const JSON: &str = "application/json";

static IDS: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    IDS.fetch_add(1, Ordering::Relaxed)
}

fn first<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.header(name).first().copied().unwrap_or("")
}

fn bearer(seen: &Seen) -> &str {
    first(seen, "authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("")
}

fn body_json(seen: &Seen) -> Value {
    serde_json::from_slice(&seen.body).unwrap_or(Value::Null)
}

fn path_only(seen: &Seen) -> &str {
    seen.path.split('?').next().unwrap_or("")
}

fn query_param(seen: &Seen, key: &str) -> Option<String> {
    let (_, q) = seen.path.split_once('?')?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Rough token count (≈ 4 bytes a token), for usage fields.
fn tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

fn sse_event(out: &mut String, event: Option<&str>, data: &Value) {
    if let Some(e) = event {
        out.push_str("event: ");
        out.push_str(e);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

// ---------------------------------------------------------------- Anthropic

/// The Anthropic Messages API as Claude Code uses it. Authenticated requests
/// (`x-api-key: KEY`, or `Authorization: Bearer KEY` as an OAuth token is
/// sent) get:
///
/// - `POST /v1/messages[?beta=true]` with `"stream": true`: the SSE stream
///   `message_start`, `content_block_start`, `ping`, `content_block_delta`
///   (`text_delta` = `reply`), `content_block_stop`, `message_delta`
///   (`stop_reason: end_turn`), `message_stop`; without `stream`: the
///   message as JSON;
/// - `POST /v1/messages/count_tokens`: `{"input_tokens":N}`;
/// - `GET /v1/models[/ID]`: one model;
/// - `POST /api/event_logging/…` (telemetry) and `HEAD /`: `{}`;
/// - anything else (Claude Code's side calls at start: remote managed
///   settings, policy limits, bootstrap, feature flags, MCP registry…): a 404
///   `not_found_error`, which Claude Code reads as "none configured" (a 200
///   it cannot parse makes it retry policy limits for ~10 s).
///
/// Others get `401 {"type":"error","error":{"type":"authentication_error",…}}`.
pub fn fake_anthropic(real_key: &str, reply: &str) -> Handler {
    let (key, reply) = (real_key.to_owned(), reply.to_owned());
    Arc::new(move |seen: &Seen| {
        let authed = first(seen, "x-api-key") == key || bearer(seen) == key;
        if !authed {
            let message = if first(seen, "x-api-key").is_empty() && bearer(seen).is_empty() {
                "x-api-key header is required"
            } else if !bearer(seen).is_empty() {
                "Invalid bearer token"
            } else {
                "invalid x-api-key"
            };
            return anthropic_error(401, "authentication_error", message);
        }
        let path = path_only(seen);
        match (seen.method.as_str(), path) {
            ("POST", "/v1/messages") => anthropic_message(seen, &reply),
            ("POST", "/v1/messages/count_tokens") => {
                let n = tokens(seen.body.len());
                (200, JSON, json!({ "input_tokens": n }).to_string())
            }
            ("GET", "/v1/models") => (
                200,
                JSON,
                json!({
                    "data": [anthropic_model("claude-sonnet-4-5-20250929")],
                    "has_more": false,
                    "first_id": "claude-sonnet-4-5-20250929",
                    "last_id": "claude-sonnet-4-5-20250929",
                })
                .to_string(),
            ),
            ("GET", p) if p.starts_with("/v1/models/") => (
                200,
                JSON,
                anthropic_model(&p["/v1/models/".len()..]).to_string(),
            ),
            // Claude Code's telemetry: accepted, dropped.
            ("POST", p) if p.starts_with("/api/event_logging/") => (200, JSON, "{}".into()),
            ("HEAD" | "GET", "/") => (200, JSON, "{}".into()),
            // Everything else Claude Code asks at start (remote managed
            // settings, policy limits, bootstrap, feature flags, the MCP
            // registry…): a 404, which it takes as "nothing configured".
            (_, p) => anthropic_error(404, "not_found_error", &format!("Not found: {p}")),
        }
    })
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
    (
        status,
        JSON,
        json!({
            "type": "error",
            "error": { "type": kind, "message": message },
            "request_id": format!("req_stand_in_{}", next_id()),
        })
        .to_string(),
    )
}

fn anthropic_model(id: &str) -> Value {
    json!({
        "type": "model",
        "id": id,
        "display_name": id,
        "created_at": "2025-09-29T00:00:00Z",
    })
}

fn anthropic_message(seen: &Seen, reply: &str) -> Reply {
    let req = body_json(seen);
    let model = req["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-5")
        .to_owned();
    let id = format!("msg_stand_in_{:08}", next_id());
    let input_tokens = tokens(seen.body.len());
    let output_tokens = tokens(reply.len());
    if req["stream"].as_bool() != Some(true) {
        return (
            200,
            JSON,
            json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{ "type": "text", "text": reply }],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": output_tokens,
                    "service_tier": "standard",
                },
            })
            .to_string(),
        );
    }
    let mut out = String::new();
    sse_event(
        &mut out,
        Some("message_start"),
        &json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                    "service_tier": "standard",
                },
            },
        }),
    );
    sse_event(
        &mut out,
        Some("content_block_start"),
        &json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": { "type": "text", "text": "" },
        }),
    );
    sse_event(&mut out, Some("ping"), &json!({ "type": "ping" }));
    sse_event(
        &mut out,
        Some("content_block_delta"),
        &json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": { "type": "text_delta", "text": reply },
        }),
    );
    sse_event(
        &mut out,
        Some("content_block_stop"),
        &json!({ "type": "content_block_stop", "index": 0 }),
    );
    sse_event(
        &mut out,
        Some("message_delta"),
        &json!({
            "type": "message_delta",
            "delta": { "stop_reason": "end_turn", "stop_sequence": null },
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
            },
        }),
    );
    sse_event(
        &mut out,
        Some("message_stop"),
        &json!({ "type": "message_stop" }),
    );
    (200, SSE, out)
}

// ------------------------------------------------------------------- OpenAI

/// The OpenAI API as Codex uses it with an API key. Requests with
/// `Authorization: Bearer KEY` get:
///
/// - `POST /v1/responses` (streaming or not): the SSE stream
///   `response.created`, `response.in_progress`, `response.output_item.added`,
///   `response.content_part.added`, `response.output_text.delta` (= `reply`),
///   `response.output_text.done`, `response.content_part.done`,
///   `response.output_item.done`, `response.completed` (with `usage`); with
///   `"stream": false`, the response object as JSON;
/// - `GET /v1/models[/ID]`: one model;
/// - anything else: a 404 in OpenAI's error shape.
///
/// Others get `401 {"error":{"message":"Incorrect API key provided…",
/// "type":"invalid_request_error","code":"invalid_api_key"}}`.
pub fn fake_openai(real_key: &str, reply: &str) -> Handler {
    let (key, reply) = (real_key.to_owned(), reply.to_owned());
    Arc::new(move |seen: &Seen| {
        let given = bearer(seen);
        if given != key {
            let message = if given.is_empty() {
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_owned()
            } else {
                format!(
                    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    redact(given)
                )
            };
            let code = if given.is_empty() {
                Value::Null
            } else {
                json!("invalid_api_key")
            };
            return (
                401,
                JSON,
                json!({ "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": null,
                    "code": code,
                }})
                .to_string(),
            );
        }
        let path = path_only(seen);
        match (seen.method.as_str(), path) {
            ("POST", "/v1/responses") => openai_response(seen, &reply),
            ("GET", "/v1/models") => (
                200,
                JSON,
                json!({ "object": "list", "data": [openai_model("gpt-5")] }).to_string(),
            ),
            ("GET", p) if p.starts_with("/v1/models/") => (
                200,
                JSON,
                openai_model(&p["/v1/models/".len()..]).to_string(),
            ),
            _ => (
                404,
                JSON,
                json!({ "error": {
                    "message": format!("Invalid URL ({} {})", seen.method, path),
                    "type": "invalid_request_error",
                    "param": null,
                    "code": null,
                }})
                .to_string(),
            ),
        }
    })
}

/// `sk-proj-…abcd`, as OpenAI quotes a wrong key.
fn redact(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let head: String = key.chars().take(8).collect();
    format!("{head}***{tail}")
}

fn openai_model(id: &str) -> Value {
    json!({ "id": id, "object": "model", "created": 1_754_000_000u64, "owned_by": "openai" })
}

fn openai_response(seen: &Seen, reply: &str) -> Reply {
    let req = body_json(seen);
    let model = req["model"].as_str().unwrap_or("gpt-5").to_owned();
    let n = next_id();
    let (resp_id, item_id) = (
        format!("resp_stand_in_{n:08}"),
        format!("msg_stand_in_{n:08}"),
    );
    let input_tokens = tokens(seen.body.len());
    let output_tokens = tokens(reply.len());
    let created = now();
    let message = |status: &str, content: Value| {
        json!({
            "id": item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let text_part =
        json!({ "type": "output_text", "text": reply, "annotations": [], "logprobs": [] });
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "instructions": null,
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "store": false,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "metadata": {},
        })
    };
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": output_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": input_tokens + output_tokens,
    });
    let done_item = message("completed", json!([text_part.clone()]));
    if req["stream"].as_bool() == Some(false) {
        return (
            200,
            JSON,
            response("completed", json!([done_item]), usage).to_string(),
        );
    }
    let mut out = String::new();
    let mut seq = 0u64;
    let mut ev = |out: &mut String, kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        sse_event(out, Some(kind), &data);
    };
    ev(
        &mut out,
        "response.created",
        json!({ "response": response("in_progress", json!([]), Value::Null) }),
    );
    ev(
        &mut out,
        "response.in_progress",
        json!({ "response": response("in_progress", json!([]), Value::Null) }),
    );
    ev(
        &mut out,
        "response.output_item.added",
        json!({ "output_index": 0, "item": message("in_progress", json!([])) }),
    );
    ev(
        &mut out,
        "response.content_part.added",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "part": { "type": "output_text", "text": "", "annotations": [], "logprobs": [] },
        }),
    );
    ev(
        &mut out,
        "response.output_text.delta",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "delta": reply, "logprobs": [],
        }),
    );
    ev(
        &mut out,
        "response.output_text.done",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "text": reply, "logprobs": [],
        }),
    );
    ev(
        &mut out,
        "response.content_part.done",
        json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "part": text_part }),
    );
    ev(
        &mut out,
        "response.output_item.done",
        json!({ "output_index": 0, "item": done_item.clone() }),
    );
    ev(
        &mut out,
        "response.completed",
        json!({ "response": response("completed", json!([done_item]), usage) }),
    );
    (200, SSE, out)
}

// ------------------------------------------------------------------- Gemini

/// The Gemini API (`generativelanguage.googleapis.com`) as the Gemini CLI
/// uses it with an API key. Requests with `x-goog-api-key: KEY` or
/// `?key=KEY` get:
///
/// - `POST /v1beta/models/M:streamGenerateContent?alt=sse`: `data:` events,
///   the last `{"candidates":[{"content":{"parts":[{"text":reply}],
///   "role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":…,
///   "modelVersion":M}`;
/// - `POST …:generateContent`: the same response as JSON (when the request
///   asks for `responseMimeType: application/json`, an object fitting its
///   `responseJsonSchema`, so the CLI's side calls — the model router's
///   complexity score, next-speaker checks — parse it);
/// - `POST …:countTokens`: `{"totalTokens":N}`; `POST …:embedContent` /
///   `:batchEmbedContents`: a small embedding;
/// - `GET /v1beta/models[/M]`: one model;
/// - anything else: a 404 in Google's error shape.
///
/// Others get `401 {"error":{"code":401,"message":"API key not valid…",
/// "status":"UNAUTHENTICATED"}}`.
pub fn fake_gemini(real_key: &str, reply: &str) -> Handler {
    let (key, reply) = (real_key.to_owned(), reply.to_owned());
    Arc::new(move |seen: &Seen| {
        let authed = first(seen, "x-goog-api-key") == key
            || query_param(seen, "key").as_deref() == Some(key.as_str());
        if !authed {
            return google_error(
                401,
                "UNAUTHENTICATED",
                "API key not valid. Please pass a valid API key.",
            );
        }
        let path = path_only(seen).to_owned();
        let (prefix, method) = match path.rsplit_once(':') {
            Some((p, m)) if !m.contains('/') => (p.to_owned(), m.to_owned()),
            _ => (path.clone(), String::new()),
        };
        let model = prefix
            .rsplit_once("/models/")
            .map(|(_, m)| m.to_owned())
            .unwrap_or_else(|| "gemini-2.5-pro".into());
        match (seen.method.as_str(), method.as_str()) {
            ("POST", "streamGenerateContent") => {
                let body = gemini_response(seen, &model, &reply);
                let mut out = String::new();
                if query_param(seen, "alt").as_deref() == Some("sse") {
                    sse_event(&mut out, None, &body);
                    (200, SSE, out)
                } else {
                    (200, JSON, json!([body]).to_string())
                }
            }
            ("POST", "generateContent") => {
                (200, JSON, gemini_response(seen, &model, &reply).to_string())
            }
            ("POST", "countTokens") => (
                200,
                JSON,
                json!({ "totalTokens": tokens(seen.body.len()) }).to_string(),
            ),
            ("POST", "embedContent") => (
                200,
                JSON,
                json!({ "embedding": { "values": [0.1, 0.2, 0.3] } }).to_string(),
            ),
            ("POST", "batchEmbedContents") => {
                let n = body_json(seen)["requests"]
                    .as_array()
                    .map(|a| a.len())
                    .unwrap_or(1);
                let one = json!({ "values": [0.1, 0.2, 0.3] });
                (200, JSON, json!({ "embeddings": vec![one; n] }).to_string())
            }
            ("GET", "") if path.ends_with("/models") => (
                200,
                JSON,
                json!({ "models": [gemini_model("gemini-2.5-pro")] }).to_string(),
            ),
            ("GET", "") if path.contains("/models/") => {
                (200, JSON, gemini_model(&model).to_string())
            }
            _ => google_error(
                404,
                "NOT_FOUND",
                &format!("The requested URL {path} was not found on this server."),
            ),
        }
    })
}

/// A value of the JSON schema `schema` (OpenAPI-style `type` names, either
/// case): strings are `reply`, numbers 1, booleans false, the first `enum`
/// value when there is one; objects get every property.
fn fit_schema(schema: &Value, reply: &str) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let kind = schema["type"]
        .as_str()
        .or_else(|| schema["type"].as_array().and_then(|t| t.first()?.as_str()))
        .unwrap_or(if schema["properties"].is_object() {
            "object"
        } else {
            "string"
        })
        .to_ascii_lowercase();
    match kind.as_str() {
        "object" => Value::Object(
            schema["properties"]
                .as_object()
                .map(|props| {
                    props
                        .iter()
                        .map(|(k, v)| (k.clone(), fit_schema(v, reply)))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        "array" => json!([]),
        "integer" | "number" => json!(1),
        "boolean" => json!(false),
        "null" => Value::Null,
        _ => json!(reply),
    }
}

fn google_error(code: u16, status: &str, message: &str) -> Reply {
    (
        code,
        JSON,
        json!({ "error": { "code": code, "message": message, "status": status } }).to_string(),
    )
}

fn gemini_model(id: &str) -> Value {
    json!({
        "name": format!("models/{id}"),
        "displayName": id,
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    })
}

fn gemini_response(seen: &Seen, model: &str, reply: &str) -> Value {
    let req = body_json(seen);
    let config = &req["generationConfig"];
    let wants_json = config["responseMimeType"].as_str() == Some("application/json");
    let text = if wants_json {
        // A structured side call (the CLI's model router, next-speaker and
        // loop checks): an object that fits the schema asked for.
        let schema = [&config["responseJsonSchema"], &config["responseSchema"]]
            .into_iter()
            .find(|s| s.is_object())
            .cloned()
            .unwrap_or(Value::Null);
        fit_schema(&schema, reply).to_string()
    } else {
        reply.to_owned()
    };
    let prompt = tokens(seen.body.len());
    let candidates = tokens(text.len());
    json!({
        "candidates": [{
            "content": { "parts": [{ "text": text }], "role": "model" },
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates,
            "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": prompt }],
        },
        "modelVersion": model,
        "responseId": format!("stand-in-{}", next_id()),
    })
}

// ---------------------------------------------------------------- all three

/// The three stand-ins on one CA: `api.anthropic.com`, `api.openai.com`,
/// `generativelanguage.googleapis.com`. Their certificates also name
/// `localhost` and `127.0.0.1`, so a CLI can be pointed straight at one
/// (`ANTHROPIC_BASE_URL=https://localhost:PORT` …, trusting the CA) to
/// compare a direct run with one through Moat.
pub struct AgentStandins {
    pub anthropic: StubServer,
    pub openai: StubServer,
    pub gemini: StubServer,
}

impl AgentStandins {
    pub const ANTHROPIC_HOST: &'static str = "api.anthropic.com";
    pub const OPENAI_HOST: &'static str = "api.openai.com";
    pub const GEMINI_HOST: &'static str = "generativelanguage.googleapis.com";

    /// `wrap` sees each handler before it is served (e.g. to log requests);
    /// pass `|_, h| h` for none.
    pub fn start(
        ca: &TestCa,
        keys: [&str; 3],
        reply: &str,
        wrap: impl Fn(&'static str, Handler) -> Handler,
    ) -> anyhow::Result<Self> {
        let [anthropic, openai, gemini] = keys;
        Ok(Self {
            anthropic: StubServer::start(
                ca,
                &[Self::ANTHROPIC_HOST, "localhost", "127.0.0.1"],
                wrap(Self::ANTHROPIC_HOST, fake_anthropic(anthropic, reply)),
            )?,
            openai: StubServer::start(
                ca,
                &[Self::OPENAI_HOST, "localhost", "127.0.0.1"],
                wrap(Self::OPENAI_HOST, fake_openai(openai, reply)),
            )?,
            gemini: StubServer::start(
                ca,
                &[Self::GEMINI_HOST, "localhost", "127.0.0.1"],
                wrap(Self::GEMINI_HOST, fake_gemini(gemini, reply)),
            )?,
        })
    }

    /// `(host, address)` of each stand-in.
    pub fn addrs(&self) -> [(&'static str, SocketAddr); 3] {
        [
            (Self::ANTHROPIC_HOST, self.anthropic.addr),
            (Self::OPENAI_HOST, self.openai.addr),
            (Self::GEMINI_HOST, self.gemini.addr),
        ]
    }

    /// The value for `MOAT_RESOLVE`: `HOST:443=127.0.0.1:PORT,…`.
    pub fn resolve(&self) -> String {
        self.addrs()
            .iter()
            .map(|(h, a)| crate::resolve_entry(h, *a))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Bytes;

    fn seen(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Seen {
        Seen {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn data_lines(body: &str) -> Vec<Value> {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("json data"))
            .collect()
    }

    #[test]
    fn anthropic_streams_only_for_the_real_key() {
        let h = fake_anthropic("sk-ant-api03-real", "pong \"quoted\"");
        let body = r#"{"model":"claude-x","stream":true,"max_tokens":5,"messages":[]}"#;
        let (s, ct, text) = h(&seen(
            "POST",
            "/v1/messages?beta=true",
            &[("x-api-key", "sk-ant-api03-real")],
            body,
        ));
        assert_eq!((s, ct), (200, SSE));
        let types: Vec<_> = data_lines(&text)
            .iter()
            .map(|v| v["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains(r#""text":"pong \"quoted\"""#));
        let (s, _, _) = h(&seen(
            "POST",
            "/v1/messages",
            &[("authorization", "Bearer sk-ant-api03-real")],
            body,
        ));
        assert_eq!(s, 200);
        let (s, _, text) = h(&seen(
            "POST",
            "/v1/messages",
            &[("x-api-key", "sk-ant-api03-placeholder")],
            body,
        ));
        assert_eq!(s, 401);
        assert!(text.contains("authentication_error"));
    }

    #[test]
    fn openai_streams_a_response_only_for_the_real_key() {
        let h = fake_openai("sk-proj-real", "pong");
        let body = r#"{"model":"gpt-5","stream":true,"input":[]}"#;
        let (s, ct, text) = h(&seen(
            "POST",
            "/v1/responses",
            &[("authorization", "Bearer sk-proj-real")],
            body,
        ));
        assert_eq!((s, ct), (200, SSE));
        let events = data_lines(&text);
        assert_eq!(events.last().unwrap()["type"], "response.completed");
        assert!(events.last().unwrap()["response"]["usage"]["total_tokens"].is_u64());
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "response.output_text.delta" && e["delta"] == "pong")
        );
        let (s, _, text) = h(&seen(
            "POST",
            "/v1/responses",
            &[("authorization", "Bearer sk-proj-fake")],
            body,
        ));
        assert_eq!(s, 401);
        assert!(text.contains("invalid_api_key"));
    }

    #[test]
    fn gemini_streams_only_for_the_real_key() {
        let h = fake_gemini("AIzaReal", "pong");
        let path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse";
        let (s, ct, text) = h(&seen("POST", path, &[("x-goog-api-key", "AIzaReal")], "{}"));
        assert_eq!((s, ct), (200, SSE));
        let ev = &data_lines(&text)[0];
        assert_eq!(ev["candidates"][0]["content"]["parts"][0]["text"], "pong");
        assert_eq!(ev["candidates"][0]["finishReason"], "STOP");
        assert_eq!(ev["modelVersion"], "gemini-2.5-pro");
        let (s, _, _) = h(&seen("POST", &format!("{path}&key=AIzaReal"), &[], "{}"));
        assert_eq!(s, 200);
        let routed = r#"{"generationConfig":{"responseMimeType":"application/json","responseJsonSchema":{"type":"OBJECT","properties":{"complexity_reasoning":{"type":"STRING"},"complexity_score":{"type":"INTEGER"}}}}}"#;
        let (s, _, text) = h(&seen(
            "POST",
            "/v1beta/models/gemini-flash-lite:generateContent",
            &[("x-goog-api-key", "AIzaReal")],
            routed,
        ));
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&text).unwrap();
        let inner: Value = serde_json::from_str(
            v["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            inner,
            json!({"complexity_reasoning": "pong", "complexity_score": 1})
        );
        let (s, _, text) = h(&seen("POST", path, &[("x-goog-api-key", "AIzaFake")], "{}"));
        assert_eq!(s, 401);
        assert!(text.contains("UNAUTHENTICATED"));
    }
}
