//! The OpenAPI document end to end: `GET /api/v1/openapi.json` is a valid
//! OpenAPI 3.1 document (openapi-spec-validator, from PyPI), lists exactly
//! the routes the controller serves with their privileges, and every
//! operation it lists is answered by the live server.

use std::collections::BTreeSet;
use std::process::Command;

use lifeboat_e2e::*;

#[test]
fn the_openapi_document_is_valid_and_describes_every_served_route() {
    let controller = Controller::start();
    let api = controller.api();
    assert_eq!(
        api.anonymous().get("/api/v1/openapi.json").0,
        401,
        "only callers learn the paths"
    );
    let (status, doc) = api.get("/api/v1/openapi.json");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");

    let scratch = ScratchDir::new("openapi");
    let file = scratch.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new("python3")
        .env("PYTHONPATH", "/var/cache/lifeboat-e2e/python")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.readers import read_from_filename\n\
             spec, _ = read_from_filename(sys.argv[1])\n\
             validate(spec)\n\
             print('valid', spec['openapi'])",
        ])
        .arg(&file)
        .output()
        .expect("python3");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.contains("valid 3.1.0"),
        "{said} (is tests/peers/requirements.txt installed? tests/install-deps.sh)"
    );

    // The document and the served table are the same set of routes.
    let documented: BTreeSet<(String, String, Option<String>)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().unwrap().iter().map(move |(method, op)| {
                (
                    method.to_uppercase(),
                    path.clone(),
                    op["x-lifeboat-privilege"].as_str().map(str::to_string),
                )
            })
        })
        .collect();
    let (_, routes) = api.get("/api/v1/routes");
    let mut served: BTreeSet<(String, String, Option<String>)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["privilege"].as_str().map(str::to_string),
            )
        })
        .collect();
    // The one public route (a login) is not in /routes, which lists what
    // a caller may call.
    served.insert(("POST".into(), "/session".into(), None));
    assert_eq!(documented, served);
    assert!(documented.len() >= 100, "{}", documented.len());

    // Each documented operation is answered, not "no such endpoint".
    for (method, path, _) in &documented {
        if method == "DELETE" && path == "/session" {
            continue;
        }
        let concrete = path
            .replace("{id}", "00000000-0000-4000-8000-00000000abcd")
            .replace(
                "{ref}",
                "local:00000000-0000-4000-8000-00000000abcd@2026-01-01T00:00:00Z",
            )
            .replace(['{', '}'], "");
        let answer = api.raw_request(
            method,
            &format!("/api/v1{concrete}"),
            &[("content-type", "application/json")],
            b"{}",
        );
        let what = format!("{method} {concrete} → {} {}", answer.status, answer.text());
        assert!(
            answer.status != 405 && !answer.text().contains("no such endpoint"),
            "{what}"
        );
        let op = &doc["paths"][path.as_str()][method.to_lowercase()];
        let documented_statuses: Vec<&String> =
            op["responses"].as_object().unwrap().keys().collect();
        let status = answer.status.to_string();
        let class = format!("{}XX", &status[..1]);
        assert!(
            documented_statuses.contains(&&status) || documented_statuses.contains(&&class),
            "{what}: documented {documented_statuses:?}"
        );
    }
}
