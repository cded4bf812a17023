//! The transports: SMTP (lettre), HTTPS POST, syslog over UDP, TCP, TLS.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::AsyncWriteExt;

use super::{formats, Origin};
use crate::alerts::channel::{https_url, SmtpSecurity, SyslogTransport};
use crate::alerts::{Alert, ChannelConfig};

/// Most bytes of a response body read (and shown in an error).
const MAX_RESPONSE: usize = 4096;

pub async fn email(config: &ChannelConfig, alert: &Alert, origin: &Origin) -> Result<(), String> {
    let ChannelConfig::Email {
        server,
        port,
        security,
        username,
        password,
        from,
        to,
        console_url,
        ca_pem,
    } = config
    else {
        return Err("not an e-mail channel".into());
    };
    let (subject, text, html) = formats::email(alert, origin, console_url);
    let mut message = Message::builder()
        .from(from.parse::<Mailbox>().map_err(|e| format!("from: {e}"))?)
        .subject(subject);
    for t in to {
        message = message.to(t.parse::<Mailbox>().map_err(|e| format!("to: {e}"))?);
    }
    let message = message
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html),
                ),
        )
        .map_err(|e| format!("cannot build the mail: {e}"))?;
    let mut tls = TlsParameters::builder(server.clone());
    if !ca_pem.trim().is_empty() {
        tls = tls
            .certificate_store(CertificateStore::None)
            .add_root_certificate(
                Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| format!("ca_pem: {e}"))?,
            );
    }
    let tls = tls.build().map_err(|e| format!("TLS: {e}"))?;
    let (tls, default_port) = match security {
        SmtpSecurity::Starttls => (Tls::Required(tls), 587),
        SmtpSecurity::Tls => (Tls::Wrapper(tls), 465),
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server)
        .port(port.unwrap_or(default_port))
        .tls(tls)
        .timeout(Some(super::ATTEMPT_TIMEOUT));
    if !username.is_empty() {
        transport = transport.credentials(Credentials::new(username.clone(), password.clone()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP {server}: {e}"))
}

/// POSTs `body` to an https URL; any 2xx status counts as delivered.
pub async fn https_post(
    url: &str,
    ca_pem: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(), String> {
    let uri = https_url("url", url)?;
    let host = uri.host().unwrap_or_default().to_string();
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let stream = connect_tls(&bare, port, ca_pem).await?;
    let authority = uri
        .authority()
        .map_or(host.clone(), |a| a.as_str().to_string());
    let mut request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "lifeboat-alerts")
        .header(hyper::header::CONTENT_TYPE, content_type);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(format!("HTTP {}: {}", status.as_u16(), body.trim()))
    }
    .await;
    driver.abort();
    result
}

async fn connect_tls(
    host: &str,
    port: u16,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config = crate::pki::client_tls(ca_pem)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS {host}:{port}: {e}"))
}

/// Syslog messages: one datagram each over UDP; over TCP and TLS one
/// connection, each framed by octet counting (`LEN SP MSG`, RFC 6587 and
/// RFC 5425).
pub async fn syslog(
    address: &str,
    transport: SyslogTransport,
    ca_pem: &str,
    messages: &[Vec<u8>],
) -> Result<(), String> {
    let (host, port) = address.rsplit_once(':').ok_or("address: HOST:PORT")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| "address: bad port")?;
    // Octet counting (RFC 6587 3.4.1, RFC 5425): each message after its length.
    let framed: Vec<u8> = messages
        .iter()
        .flat_map(|m| {
            format!("{} ", m.len())
                .into_bytes()
                .into_iter()
                .chain(m.clone())
        })
        .collect();
    match transport {
        SyslogTransport::Udp => {
            let socket = tokio::net::UdpSocket::bind(if host.contains(':') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .await
            .map_err(|e| e.to_string())?;
            for m in messages {
                socket
                    .send_to(m, (host, port))
                    .await
                    .map_err(|e| format!("send to {address}: {e}"))?;
            }
            Ok(())
        }
        SyslogTransport::Tcp => {
            let mut tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("connect {address}: {e}"))?;
            tcp.write_all(&framed).await.map_err(|e| e.to_string())?;
            tcp.shutdown().await.map_err(|e| e.to_string())
        }
        SyslogTransport::Tls => {
            let mut tls = connect_tls(host, port, ca_pem).await?;
            tls.write_all(&framed).await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        }
    }
}
