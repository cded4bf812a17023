//! Hostile peers, for the attack tests: raw TLS clients of the console
//! port, strangers on the agent port (TLS without a client certificate, as
//! before enrollment) and an enrolled but hostile agent. The hostile agent enrolls with a real one-time token and
//! gets a real certificate, exactly as `lifeboat-agent` does; afterwards it
//! says whatever a test makes it say, on the real protocol (framed JSON over
//! mutual TLS), against the real controller binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use crate::controller::Controller;

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn client_config(
    controller: &Controller,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(controller.ca_pem()).expect("controller CA");
    roots.add(ca).expect("add CA");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    })
}

fn connect(controller: &Controller, config: Arc<rustls::ClientConfig>) -> TlsStream {
    connect_to(&controller.agent_addr(), "lifeboat-controller", config)
}

fn connect_to(address: &str, server_name: &str, config: Arc<rustls::ClientConfig>) -> TlsStream {
    let name = server_name.to_string().try_into().expect("server name");
    let conn = rustls::ClientConnection::new(config, name).expect("TLS client");
    let tcp = TcpStream::connect(address).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// A raw TLS connection to the console and API port, for clients that
/// misbehave below HTTP (slow headers, idle connections).
pub fn web_tls(controller: &Controller) -> TlsStream {
    let address = format!("127.0.0.1:{}", controller.api_port());
    connect_to(&address, "127.0.0.1", client_config(controller, None))
}

/// A TLS connection to the agent port without a client certificate, as a
/// host before enrollment (or anyone) makes.
pub fn stranger_tls(controller: &Controller) -> TlsStream {
    connect(controller, client_config(controller, None))
}

/// A JSON frame as the agent protocol has it: length, kind 0, JSON.
pub fn json_frame(json: &str) -> Vec<u8> {
    let mut v = (json.len() as u32 + 1).to_be_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(json.as_bytes());
    v
}

fn read_json_frame(stream: &mut impl Read) -> Value {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("frame length");
    let len = u32::from_be_bytes(len) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("frame body");
    assert_eq!(body[0], 0, "a JSON frame");
    serde_json::from_slice(&body[1..]).expect("frame JSON")
}

/// An enrolled agent under the test's control.
pub struct HostileAgent {
    pub host_id: String,
    stream: TlsStream,
    seq: u64,
}

impl HostileAgent {
    /// Enrolls as host `name` with a fresh token from the admin API, then
    /// connects with the issued certificate and says hello.
    pub fn enroll(controller: &Controller, name: &str) -> HostileAgent {
        let (token, _) = controller.api().enrollment_token();
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("CSR")
            .pem()
            .expect("CSR PEM");
        let mut s = stranger_tls(controller);
        let enroll = json!({"type": "enroll", "token": token, "csr_pem": csr,
                            "name": name, "hostname": name});
        s.write_all(&json_frame(&enroll.to_string()))
            .expect("send enroll");
        let reply = read_json_frame(&mut s);
        assert_eq!(reply["type"], "enrolled", "{reply}");
        let host_id = reply["host_id"].as_str().expect("host id").to_string();
        let chain =
            vec![
                CertificateDer::from_pem_slice(reply["cert_pem"].as_str().unwrap().as_bytes())
                    .expect("issued certificate"),
            ];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
        let mut stream = connect(controller, client_config(controller, Some((chain, key))));
        let hello = json!({"type": "hello", "protocol_version": 1, "agent_version": "hostile",
            "facts": {"hostname": name, "driver": "libvirt", "hypervisor_version": "",
                      "cpus": 4, "memory_total_bytes": 1u64 << 34, "memory_free_bytes": 1u64 << 33}});
        stream
            .write_all(&json_frame(&hello.to_string()))
            .expect("send hello");
        let welcome = read_json_frame(&mut stream);
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        HostileAgent {
            host_id,
            stream,
            seq: 0,
        }
    }

    pub fn send(&mut self, message: &Value) {
        self.stream
            .write_all(&json_frame(&message.to_string()))
            .expect("send to the controller");
    }

    /// A heartbeat, to stay online while a test waits.
    pub fn heartbeat(&mut self) {
        self.seq += 1;
        let beat = json!({"type": "heartbeat", "seq": self.seq, "memory_free_bytes": 1u64 << 33});
        self.send(&beat);
    }

    /// An inventory report of these VMs (as `VmInfo` JSON).
    pub fn report(&mut self, vms: Vec<Value>) {
        self.send(&json!({"type": "inventory", "vms": vms}));
    }
}

/// A VM as an agent reports it.
pub fn reported_vm(uuid: &str, name: &str, power_state: &str) -> Value {
    json!({"uuid": uuid, "name": name, "power_state": power_state, "vcpus": 1,
           "memory_mib": 64, "disks": [], "nics": [],
           "config": format!("<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid></domain>")})
}
