//! A real OpenLDAP `slapd` for directory tests: a throwaway configuration
//! and database in a scratch directory, LDAPS and LDAP (with StartTLS) on
//! high loopback ports, a private CA made with `openssl`, and the
//! `openldap` user running it. Directory entries are loaded and changed
//! with `ldapadd`/`ldapmodify`, as an administrator would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ports::free_port;
use crate::process::run_checked;
use crate::process::{print_log_if_failing, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::wait::{poll_until, READY_TIMEOUT};

pub const BASE_DN: &str = "dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PASSWORD: &str = "directory-admin-secret";

pub struct Slapd {
    process: Option<LoggedProcess>,
    ldap_port: u16,
    ldaps_port: u16,
    dir: PathBuf,
    log: PathBuf,
    _scratch: ScratchDir,
}

impl Slapd {
    /// Starts slapd with the base entries `ou=people` and `ou=groups`, and
    /// waits until it answers.
    pub fn start() -> Slapd {
        let scratch = ScratchDir::new("slapd");
        let dir = scratch.path().to_path_buf();
        make_ca_and_server_certificate(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create slapd data dir");
        std::fs::write(dir.join("slapd.conf"), config(&dir)).expect("write slapd.conf");
        // slapd runs as `openldap`: it must read its files and own its data.
        run(
            "chown",
            &["-R", "openldap:openldap", &dir.to_string_lossy()],
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (ldap_port, ldaps_port) = (free_port(), free_port());
        let log = dir.join("slapd.log");
        let mut command = Command::new("slapd");
        command
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/"
            ))
            .args(["-u", "openldap", "-g", "openldap", "-d", "256"]);
        let process = LoggedProcess::spawn("slapd", command, &log);
        let slapd = Slapd {
            process: Some(process),
            ldap_port,
            ldaps_port,
            dir,
            log,
            _scratch: scratch,
        };
        poll_until("slapd to answer", READY_TIMEOUT, || {
            slapd.try_search("(objectClass=*)")
        });
        slapd.add(&format!(
            "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=people,{BASE_DN}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n"
        ));
        slapd
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// The PEM of the CA that signed slapd's certificate.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.pem")).expect("read ca.pem")
    }

    /// Adds `uid=NAME,ou=people` with a password.
    pub fn add_user(&self, uid: &str, password: &str) {
        self.add(&format!(
            "dn: uid={uid},ou=people,{BASE_DN}\nobjectClass: inetOrgPerson\nuid: {uid}\n\
             cn: {uid}\nsn: {uid}\nuserPassword: {password}\n"
        ));
    }

    /// Adds `cn=NAME,ou=groups` with the given users as members (and a
    /// placeholder: `groupOfNames` may not be empty, and users move out).
    pub fn add_group(&self, cn: &str, members: &[&str]) {
        let members: String = std::iter::once(format!("member: cn=placeholder,{BASE_DN}\n"))
            .chain(members.iter().map(|m| format!("member: {}\n", user_dn(m))))
            .collect();
        self.add(&format!(
            "dn: cn={cn},ou=groups,{BASE_DN}\nobjectClass: groupOfNames\ncn: {cn}\n{members}"
        ));
    }

    /// Moves a user from one group to another.
    pub fn move_user(&self, uid: &str, from: &str, to: &str) {
        let dn = user_dn(uid);
        self.ldap_tool(
            "ldapmodify",
            &format!(
                "dn: cn={from},ou=groups,{BASE_DN}\nchangetype: modify\ndelete: member\nmember: {dn}\n\n\
                 dn: cn={to},ou=groups,{BASE_DN}\nchangetype: modify\nadd: member\nmember: {dn}\n"
            ),
        );
    }

    /// Stops slapd, as a directory outage.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_9();
        }
    }

    fn add(&self, ldif: &str) {
        self.ldap_tool("ldapadd", ldif);
    }

    fn ldap_tool(&self, tool: &str, ldif: &str) {
        let mut child = self
            .as_admin(tool)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {tool} (is ldap-utils installed?): {e}"));
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ldif.as_bytes())
            .expect("write LDIF");
        let out = child.wait_with_output().expect("wait for ldap tool");
        assert!(
            out.status.success(),
            "{tool}: {}\n{ldif}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An OpenLDAP tool bound as the directory's administrator.
    fn as_admin(&self, tool: &str) -> Command {
        let mut command = Command::new(tool);
        command.args([
            "-x",
            "-H",
            &self.ldap_url(),
            "-D",
            ADMIN_DN,
            "-w",
            ADMIN_PASSWORD,
        ]);
        command
    }

    fn try_search(&self, filter: &str) -> Result<(), String> {
        let out = self
            .as_admin("ldapsearch")
            .args(["-b", "", "-s", "base", filter])
            .output()
            .map_err(|e| format!("cannot run ldapsearch: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
        print_log_if_failing("slapd", &self.log);
    }
}

pub fn user_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,{BASE_DN}")
}

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "include /etc/ldap/schema/core.schema\n\
         include /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n\
         include /etc/ldap/schema/nis.schema\n\
         pidfile {d}/slapd.pid\n\
         argsfile {d}/slapd.args\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         TLSCACertificateFile {d}/ca.pem\n\
         TLSCertificateFile {d}/server.pem\n\
         TLSCertificateKeyFile {d}/server.key\n\
         database mdb\n\
         maxsize 10485760\n\
         suffix \"{BASE_DN}\"\n\
         rootdn \"{ADMIN_DN}\"\n\
         rootpw {ADMIN_PASSWORD}\n\
         directory {d}/data\n"
    )
}

/// A private CA and a server certificate for 127.0.0.1 signed by it.
pub(crate) fn make_ca_and_server_certificate(dir: &Path) {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Lifeboat test directory CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write san.ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("san.ext"),
            "-out",
            &p("server.pem"),
        ],
    );
}

fn run(program: &str, args: &[&str]) {
    run_checked(program, args, Path::new("/"));
}
