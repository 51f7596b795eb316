//! The AWS SDK on Moat's own HTTP client, and the two calls Moat makes with
//! it: `sts:AssumeRole` and `ssm:GetParameter`.
//!
//! The SDK's credential chain (environment, shared config and credentials
//! files, `AWS_PROFILE`, SSO, web identity, instance metadata) is used as it
//! is. Its HTTP goes through [`Upstream`] (`MOAT_RESOLVE`, `MOAT_UPSTREAM_CA`,
//! the host's `HTTPS_PROXY`, rustls on ring), so the SDK brings no TLS stack
//! of its own and tests reach a local stand-in by the real host names.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use bytes::Bytes;
use secrecy::SecretString;

use super::role::RoleConfig;
use crate::net::{Upstream, error_chain};

/// STS's region when none is configured anywhere (its global endpoint's).
const FALLBACK_REGION: &str = "us-east-1";
/// A whole SDK call (connect + answer) when the SDK sets no timeouts.
const DEFAULT_LIMIT: Duration = Duration::from_secs(30);

/// Temporary credentials from STS.
#[derive(Clone)]
pub struct Issued {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    pub expiration: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// What went wrong, said so the user knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(
        "no AWS credentials found on this host (tried the environment, ~/.aws/config and ~/.aws/credentials, SSO, web identity and instance metadata): run 'aws configure', set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile with --aws-profile"
    )]
    NoCredentials,
    #[error(
        "the AWS profile '{0}' is not defined in ~/.aws/config or ~/.aws/credentials: check the name ('aws configure list-profiles'), or drop --aws-profile/AWS_PROFILE"
    )]
    UnknownProfile(String),
    #[error("the host's AWS credentials could not be loaded: {0}")]
    Credentials(String),
    #[error(
        "not allowed to assume {role}: {message}. The role's trust policy must allow your host identity (see 'aws sts get-caller-identity') to call sts:AssumeRole{external_id}"
    )]
    AccessDenied {
        role: String,
        message: String,
        external_id: &'static str,
    },
    #[error("cannot reach AWS {service}: {reason} (check the network, or HTTPS_PROXY)")]
    Unreachable {
        service: &'static str,
        reason: String,
    },
    #[error("AWS {service} answered {code}: {message}")]
    Service {
        service: &'static str,
        code: String,
        message: String,
    },
}

/// The SDK's HTTP client: every request through [`Upstream::exchange`].
#[derive(Clone)]
struct MoatHttp(Arc<Upstream>);

impl std::fmt::Debug for MoatHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MoatHttp")
    }
}

impl HttpClient for MoatHttp {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // The SDK's own limits (instance metadata asks for 1 s each) bound
        // the whole exchange; without them, Moat's.
        let limit = match (settings.connect_timeout(), settings.read_timeout()) {
            (None, None) => DEFAULT_LIMIT,
            (c, r) => c.unwrap_or(DEFAULT_LIMIT) + r.unwrap_or(DEFAULT_LIMIT),
        };
        SharedHttpConnector::new(Connector {
            upstream: self.0.clone(),
            limit,
        })
    }
}

#[derive(Debug)]
struct Connector {
    upstream: Arc<Upstream>,
    limit: Duration,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let upstream = self.upstream.clone();
        let limit = self.limit;
        HttpConnectorFuture::new(async move {
            let req = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = req.into_parts();
            // Every request Moat makes (STS, SSM, SSO, metadata) has its
            // body in memory.
            let body = body
                .bytes()
                .map(Bytes::copy_from_slice)
                .ok_or_else(|| ConnectorError::user("a streaming request body".into()))?;
            let resp = upstream
                .exchange(http::Request::from_parts(parts, body), limit)
                .await
                .map_err(|e| match e {
                    crate::net::NetError::Timeout { .. } => ConnectorError::timeout(e.into()),
                    e => ConnectorError::io(e.into()),
                })?;
            let (parts, body) = resp.into_parts();
            let resp = http::Response::from_parts(parts, SdkBody::from(body));
            aws_smithy_runtime_api::http::Response::try_from(resp)
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The host's AWS configuration: `profile` (else `AWS_PROFILE`, else
/// `default`), `region` (else the configured one, else us-east-1), every
/// request through `upstream`.
pub async fn host_config(
    upstream: Arc<Upstream>,
    profile: Option<&str>,
    region: Option<&str>,
) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).http_client(MoatHttp(upstream));
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_owned()));
    }
    // The loader's own region chain (environment, profile, instance
    // metadata) runs on Moat's HTTP client; a chain built apart would not.
    let conf = loader.load().await;
    if conf.region().is_some() {
        return conf;
    }
    conf.to_builder()
        .region(Region::from_static(FALLBACK_REGION))
        .build()
}

/// Load the host's credentials once, so a missing profile or no
/// credentials at all is said plainly before any AWS call.
pub async fn check_host_credentials(
    conf: &SdkConfig,
    profile: Option<&str>,
) -> Result<(), AwsError> {
    let Some(provider) = conf.credentials_provider() else {
        return Err(AwsError::NoCredentials);
    };
    match provider.provide_credentials().await {
        Ok(_) => Ok(()),
        Err(e) => Err(credentials_error(&e, profile)),
    }
}

fn credentials_error(e: &CredentialsError, profile: Option<&str>) -> AwsError {
    let text = error_chain(e);
    let profile = profile
        .map(str::to_owned)
        .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()));
    if let Some(p) = profile
        && (text.contains("ProfileNotDefined") || text.contains("not defined"))
    {
        return AwsError::UnknownProfile(p);
    }
    match e {
        CredentialsError::CredentialsNotLoaded(_) => AwsError::NoCredentials,
        _ => AwsError::Credentials(text),
    }
}

/// `sts:AssumeRole` as `role` says, with `session_name` (2–64 of
/// `[A-Za-z0-9+=,.@_-]`).
pub async fn assume_role(
    conf: &SdkConfig,
    role: &RoleConfig,
    session_name: &str,
) -> Result<Issued, AwsError> {
    let client = aws_sdk_sts::Client::new(conf);
    let secs = i32::try_from(role.duration.as_secs()).unwrap_or(i32::MAX);
    let sent = client
        .assume_role()
        .role_arn(&role.role_arn)
        .role_session_name(session_name)
        .duration_seconds(secs)
        .set_external_id(role.external_id.clone())
        .send()
        .await;
    let out = sent.map_err(|e| match sdk_error(e, "STS", role.profile.as_deref()) {
        AwsError::Service { code, message, .. } if code == "AccessDenied" => {
            AwsError::AccessDenied {
                role: role.role_arn.clone(),
                message,
                external_id: if role.external_id.is_some() {
                    " with this external ID"
                } else {
                    ""
                },
            }
        }
        e => e,
    })?;
    let c = out.credentials.ok_or_else(|| AwsError::Service {
        service: "STS",
        code: "no credentials".into(),
        message: "AssumeRole answered without credentials".into(),
    })?;
    let expiration = SystemTime::try_from(c.expiration).unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(Issued {
        access_key_id: c.access_key_id,
        secret_access_key: SecretString::from(c.secret_access_key),
        session_token: SecretString::from(c.session_token),
        expiration,
    })
}

/// Any failed SDK call as an [`AwsError`]: the service's answer (parsed
/// by the SDK, or read from a body it could not parse: a stand-in's, a
/// proxy's), or a failure before any service answered.
fn sdk_error<E>(
    e: SdkError<E, aws_smithy_runtime_api::http::Response>,
    service: &'static str,
    profile: Option<&str>,
) -> AwsError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    let (code, message) = match &e {
        SdkError::ServiceError(s) => service_error(s.err().code(), s.err().message(), s.raw()),
        SdkError::ResponseError(r) => service_error(None, None, r.raw()),
        _ => return dispatch_error(e, service, profile),
    };
    AwsError::Service {
        service,
        code,
        message,
    }
}

/// The error's code and message: as the SDK parsed them, else read from the
/// raw answer (an error body in another protocol's shape, from a proxy or a
/// stand-in: `<Code>`/`<Message>` in XML, `__type`/`message` in JSON), else
/// the HTTP status.
fn service_error(
    code: Option<&str>,
    message: Option<&str>,
    raw: &aws_smithy_runtime_api::http::Response,
) -> (String, String) {
    if let Some(code) = code {
        return (code.to_owned(), message.unwrap_or("no message").to_owned());
    }
    let body = raw
        .body()
        .bytes()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let len = body[start..].find(&format!("</{name}>"))?;
        Some(body[start..start + len].trim().to_owned())
    };
    let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_str())
            .map(|s| s.rsplit('#').next().unwrap_or(s).to_owned())
    };
    let status = raw.status().as_u16();
    (
        tag("Code")
            .or_else(|| field("__type"))
            .unwrap_or_else(|| format!("HTTP {status}")),
        tag("Message")
            .or_else(|| field("message").or_else(|| field("Message")))
            .unwrap_or_else(|| "no message".to_owned()),
    )
}

/// A failure before any service answered: credentials that would not load,
/// or the endpoint out of reach.
fn dispatch_error<E, R>(e: SdkError<E, R>, service: &'static str, profile: Option<&str>) -> AwsError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    // Identity resolution failures arrive wrapped; find the credentials
    // error among the causes.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(ce) = c.downcast_ref::<CredentialsError>() {
            return credentials_error(ce, profile);
        }
        cause = c.source();
    }
    let reason = match &e {
        SdkError::DispatchFailure(d) => d
            .as_connector_error()
            .map(|c| error_chain(c))
            .unwrap_or_else(|| error_chain(&e)),
        SdkError::TimeoutError(_) => "no answer in time".into(),
        _ => error_chain(&e),
    };
    AwsError::Unreachable { service, reason }
}

/// `ssm:GetParameter` with decryption, in `region` (else the configured one).
pub async fn get_parameter(conf: &SdkConfig, name: &str) -> Result<SecretString, AwsError> {
    let client = aws_sdk_ssm::Client::new(conf);
    let sent = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await;
    match sent {
        Ok(out) => out
            .parameter
            .and_then(|p| p.value)
            .map(SecretString::from)
            .ok_or_else(|| AwsError::Service {
                service: "SSM",
                code: "no value".into(),
                message: format!("parameter {name} has no value"),
            }),
        Err(e) => Err(sdk_error(e, "SSM", None)),
    }
}
