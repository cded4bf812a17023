//! The web console as a browser uses it: login form with CSRF, session cookie
//! flags, pages, filtering and paging, a power button, the enrollment page's
//! command (used for real), logout; and screenshots in headless Chromium.

use std::time::Duration;

use lifeboat_e2e::*;

#[test]
fn console_login_pages_power_button_and_logout() {
    let libvirt = Libvirt::ensure();
    let vms: Vec<TinyVm> = (0..3)
        .map(|i| libvirt.define_tiny_vm(&format!("page{i}")))
        .collect();
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-console", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_status("kvm-console", "online", READY_TIMEOUT);
    for vm in &vms {
        api.wait_vm(vm.name(), READY_TIMEOUT);
    }
    let mut b = ConsoleClient::new(&controller);

    // Not logged in: every page sends you to the login form.
    let r = b.get("/vms");
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));

    // A wrong password, and a login without the form's CSRF token, fail.
    let r = b.login("wrong password");
    assert_eq!(r.status, 401);
    assert!(
        r.text().contains("invalid user name or password"),
        "{}",
        r.text()
    );
    let r = b.request(
        "POST",
        "/login",
        &[
            ("username", ADMIN_USER),
            ("password", controller.admin_password()),
        ],
    );
    assert_eq!(r.status, 401);

    let r = b.login(controller.admin_password());
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/")),
        "{}",
        r.text()
    );
    let cookie = r
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("lb_session="))
        .map(|(_, v)| v.clone())
        .expect("session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "cookie lacks {flag}: {cookie}");
    }

    let r = b.get("/");
    assert_eq!(r.status, 200);
    let dash = r.text();
    assert!(
        dash.contains("Dashboard") && dash.contains("kvm-console"),
        "{dash}"
    );
    assert!(r.header("content-security-policy").is_some());
    assert_eq!(r.header("x-frame-options"), Some("DENY"));

    let r = b.get("/hosts");
    assert!(r.status == 200 && r.text().contains("kvm-console"));

    // Filter by name, then page through the host's VMs two at a time.
    let r = b.get(&format!("/vms?name={}", vms[1].name()));
    let page = r.text();
    assert!(
        page.contains(vms[1].name()) && !page.contains(vms[0].name()),
        "{page}"
    );
    let prefix = vms[0]
        .name()
        .rsplit_once('-')
        .map(|(p, _)| p)
        .unwrap_or_default()
        .to_string();
    let filter = vms[0]
        .name()
        .split('-')
        .take(2)
        .collect::<Vec<_>>()
        .join("-");
    let r = b.get(&format!("/vms?name={filter}&per_page=2&sort=name"));
    let first = r.text();
    assert!(first.contains("Page 1 of 2"), "{prefix}: {first}");
    assert!(first.contains("Next ›"));
    let r = b.get(&format!("/vms?name={filter}&per_page=2&sort=name&page=2"));
    let second = r.text();
    assert!(
        second.contains("Page 2 of 2") && second.contains(vms[2].name()),
        "{second}"
    );
    let r = b.get(&format!(
        "/vms?name={filter}&sort=name&order=desc&state=stopped"
    ));
    let desc = r.text();
    let (p0, p2) = (desc.find(vms[0].name()), desc.find(vms[2].name()));
    assert!(
        p0.is_some() && p2.is_some() && p2 < p0,
        "descending order expected"
    );

    // The VM page's power button, with and without the CSRF token.
    let vm_path = format!("/vms/{}", vms[0].uuid());
    let r = b.get(&vm_path);
    assert_eq!(r.status, 200);
    let csrf = csrf_of(&r.text());
    let r = b.request("POST", &format!("{vm_path}/power"), &[("action", "start")]);
    assert_eq!(r.status, 403, "a form without CSRF token must be refused");
    let r = b.request(
        "POST",
        &format!("{vm_path}/power"),
        &[("action", "start"), ("csrf", "forged")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        vms[0].state(),
        "shut off",
        "a refused form changed something"
    );
    let r = b.request(
        "POST",
        &format!("{vm_path}/power"),
        &[("action", "start"), ("csrf", &csrf)],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").unwrap_or_default().to_string();
    let job_id = location.rsplit('=').next().unwrap_or_default().to_string();
    let job = api.wait_job(&json!(job_id), Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(libvirt.domstate(vms[0].name()), "running");
    let r = b.get(&format!("/jobs/{job_id}"));
    assert!(r.status == 200 && r.text().contains("succeeded"));

    // Unknown pages and objects are 404s inside the frame.
    assert_eq!(b.get("/vms/not-a-vm").status, 404);
    assert_eq!(b.get("/nowhere").status, 404);
    let css = b.get("/assets/style.css");
    assert_eq!(css.status, 200);
    assert!(css
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/css"));

    // Log out: the old cookie no longer opens anything.
    let old_cookie = b.cookie_header();
    let r = b.request("POST", "/logout", &[("csrf", &csrf)]);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    let r = controller
        .api()
        .anonymous()
        .raw_request("GET", "/", &[("cookie", &old_cookie)], b"");
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
}

#[test]
fn enrollment_page_shows_a_command_that_works() {
    let libvirt = Libvirt::ensure();
    let controller = Controller::start();
    let mut b = ConsoleClient::new(&controller);
    assert_eq!(b.login(controller.admin_password()).status, 303);
    let page = b.get("/agents").text();
    let r = b.request("POST", "/agents/tokens", &[("csrf", &csrf_of(&page))]);
    assert_eq!(r.status, 200);
    let html = r.text();
    let start = html
        .find("lifeboat-agent --controller ")
        .expect("agent command on the page");
    let command: String = html[start..]
        .split('<')
        .next()
        .unwrap_or_default()
        .to_string();
    let words: Vec<&str> = command.split_whitespace().collect();
    let arg = |name: &str| {
        let i = words
            .iter()
            .position(|w| *w == name)
            .unwrap_or_else(|| panic!("{name} in {command}"));
        words[i + 1].to_string()
    };
    assert_eq!(arg("--controller"), controller.agent_addr());
    let (token, fingerprint) = (arg("--token"), arg("--ca-fingerprint"));
    assert!(fingerprint.starts_with("sha256:"), "{command}");

    // Paste it, as an operator would (plus a state dir and our libvirt).
    let state = ScratchDir::new("pasted-agent");
    let mut child = std::process::Command::new(agent_binary())
        .args([
            "--controller",
            &arg("--controller"),
            "--token",
            &token,
            "--ca-fingerprint",
            &fingerprint,
        ])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--name", "pasted", "--libvirt-uri", libvirt.uri()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn agent");
    let host = std::panic::catch_unwind(|| {
        controller
            .api()
            .wait_host_status("pasted", "online", READY_TIMEOUT)
    });
    let _ = child.kill();
    let _ = child.wait();
    host.expect("the pasted command enrolled a host");
}

#[test]
fn console_screenshots_in_chromium() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("shot");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-shot", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("kvm-shot", vm.name());
    let job = api.post_job(
        &format!("/api/v1/vms/{}/power", vm.uuid()),
        &json!({"action": "start"}),
        Duration::from_secs(60),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    // A backup, so the VM page shows its backup section filled in.
    let job = api.post_job(
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &json!({"mode": "full"}),
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    let vm_page = format!("/vms/{}", vm.uuid());
    let shots = browser_screenshots(&controller, &[&vm_page]);
    for shot in &shots {
        eprintln!("screenshot: {}", shot.display());
    }
    assert_eq!(shots.len(), 2);
}

#[test]
fn console_manages_users_and_roles_and_exports_the_audit_trail() {
    let controller = Controller::start();
    let mut b = ConsoleClient::new(&controller);
    assert_eq!(b.login(controller.admin_password()).status, 303);
    let page = b.get("/users");
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.text());
    let r = b.request(
        "POST",
        "/users",
        &[
            ("csrf", &csrf),
            ("name", "frank"),
            ("password", "ten-chars-or-more"),
            ("role", "auditor"),
        ],
    );
    assert_eq!((r.status, r.header("location")), (303, Some("/users")));
    assert!(b.get("/users").text().contains("frank"));
    let r = b.request(
        "POST",
        "/users",
        &[
            ("csrf", &csrf),
            ("name", "gina"),
            ("password", "short"),
            ("role", "auditor"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = b.request(
        "POST",
        "/roles",
        &[
            ("csrf", &csrf),
            ("name", "night-shift"),
            ("privilege", "view"),
            ("privilege", "power"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let (_, role) = controller.api().get("/api/v1/roles/night-shift");
    assert_eq!(role["privileges"], json!(["view", "power"]));
    let r = b.request(
        "POST",
        "/users/frank",
        &[("csrf", &csrf), ("disabled", "true")],
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        controller.api().get("/api/v1/users/frank").1["disabled"],
        true
    );

    // Access policies, category rules, directories and tokens by form.
    let r = b.request(
        "POST",
        "/access-policies",
        &[
            ("csrf", &csrf),
            ("name", "finance"),
            ("rules", "allow department=Finance\ndeny site=lab"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let (_, policy) = controller.api().get("/api/v1/policies/finance");
    assert_eq!(
        policy["rules"][1],
        json!({"effect": "deny", "key": "site", "value": "lab"})
    );
    let r = b.request(
        "POST",
        "/access-policies",
        &[("csrf", &csrf), ("name", "bad"), ("rules", "maybe x=y")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = b.request(
        "POST",
        "/category-rules",
        &[
            ("csrf", &csrf),
            ("key", "department"),
            ("value", "Finance"),
            ("name_pattern", "fin-*"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(b.get("/access-policies").text().contains("fin-*"));
    let r = b.request(
        "POST",
        "/directories",
        &[
            ("csrf", &csrf),
            ("name", "corp"),
            ("url", "ldap://dc1:389"),
            ("bind_dn", "cn=svc"),
            ("bind_password", "pw"),
            ("user_base", "ou=people"),
            ("user_attribute", "uid"),
            ("group_base", "ou=groups"),
            ("mappings", "admins=administrator"),
        ],
    );
    assert_eq!(
        r.status,
        400,
        "plain LDAP without StartTLS is refused: {}",
        r.text()
    );
    let r = b.request(
        "POST",
        "/tokens",
        &[
            ("csrf", &csrf),
            ("name", "nightly"),
            ("expires_in_days", "3"),
            ("privilege", "view"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    let token = page
        .split("<code>lbt_")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .map(|t| format!("lbt_{t}"))
        .expect("the new token on the page");
    assert_eq!(
        controller.api().with_bearer(&token).get("/api/v1/hosts").0,
        200
    );
    assert!(!b.get("/tokens").text().contains(&token), "shown once");

    let audit = b.get("/audit?user=admin").text();
    assert!(
        audit.contains("create user") && audit.contains("user frank"),
        "{audit}"
    );
    let csv = b.get("/audit.csv?action=create%20role");
    assert_eq!(csv.status, 200);
    assert!(csv
        .header("content-disposition")
        .unwrap()
        .contains("attachment"));
    let text = csv.text();
    assert!(
        text.starts_with("seq,time,user,source,action,object,result"),
        "{text}"
    );
    assert!(
        text.contains("role night-shift,ok") && !text.contains("user frank"),
        "{text}"
    );
}
