//! Connecting to a controller over TLS (the `palisade` CLI, tests).

use std::time::Duration;

use palisade_proto::v1::agent_service_client::AgentServiceClient;
use palisade_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::parse_bundle;
use crate::server::MAX_MESSAGE;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("controller URL {0:?}: {1}")]
    Url(String, String),
    #[error("connecting to {url}: {error}")]
    Connect {
        url: String,
        error: tonic::transport::Error,
    },
    #[error("{0}")]
    Credentials(String),
}

/// A TLS channel to `url` trusting `ca_pem`, with a client certificate when
/// given.
pub async fn channel(
    url: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Channel, ClientError> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ClientError::Url(url.into(), e.to_string()))?
        .tls_config(tls)
        .map_err(|e| ClientError::Url(url.into(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    endpoint
        .connect()
        .await
        .map_err(|error| ClientError::Connect {
            url: url.into(),
            error,
        })
}

/// Adds `authorization: Bearer …` when the operator uses a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type OperatorClient = OperatorServiceClient<InterceptedService<Channel, Bearer>>;

/// How an operator authenticates.
pub enum OperatorAuth {
    /// A bundle from `palisade-controller operator-cert` (PEM text).
    Bundle(String),
    /// A bearer token and the CA to trust (PEM text).
    Token { token: String, ca_pem: String },
}

pub async fn operator(url: &str, auth: OperatorAuth) -> Result<OperatorClient, ClientError> {
    let (ch, bearer) = match auth {
        OperatorAuth::Bundle(text) => {
            let b = parse_bundle(&text).ok_or_else(|| {
                ClientError::Credentials(
                    "the certificate bundle needs a certificate, its private key and the controller's CA (palisade-controller operator-cert writes one)".into(),
                )
            })?;
            (
                channel(url, &b.ca_pem, Some((&b.cert_pem, &b.key_pem))).await?,
                None,
            )
        }
        OperatorAuth::Token { token, ca_pem } => {
            let v = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| ClientError::Credentials("the operator token is not ASCII".into()))?;
            (channel(url, &ca_pem, None).await?, Some(v))
        }
    };
    Ok(OperatorServiceClient::with_interceptor(ch, Bearer(bearer))
        .max_decoding_message_size(16 * MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// An agent client over `ch`.
pub fn agent(ch: Channel) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(ch)
        .max_decoding_message_size(16 * MAX_MESSAGE)
        .max_encoding_message_size(16 * MAX_MESSAGE)
}
