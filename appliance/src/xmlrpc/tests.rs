use super::*;
use crate::http::routing::Lookup;

fn call_xml(name: &str, params: &str) -> String {
    format!("<?xml version=\"1.0\"?><methodCall><methodName>{name}</methodName><params>{params}</params></methodCall>")
}

fn code_of(r: Result<(String, Vec<Value>), Refusal>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.code,
    }
}

#[test]
fn every_rest_method_names_a_route_of_the_rest_table() {
    for m in methods::METHODS {
        let Target::Rest(method, path) = m.target else {
            continue;
        };
        let path = path.replace("{object}", "vms/{id}");
        let segments = crate::http::routing::segments(&path);
        assert!(
            matches!(
                crate::api::routes::find(method, &segments),
                Lookup::Found(_)
            ),
            "{}: {method} {path}",
            m.name
        );
    }
    let names: std::collections::HashSet<_> = methods::METHODS.iter().map(|m| m.name).collect();
    assert_eq!(names.len(), methods::METHODS.len(), "no name twice");
}

#[test]
fn a_call_is_parsed_with_its_typed_arguments() {
    let xml = call_xml(
        "vm.power",
        "<param><value><string>u-1</string></value></param><param><value>start</value></param>",
    );
    let (name, params) = parse_call(xml.as_bytes()).unwrap();
    assert_eq!(name, "vm.power");
    assert_eq!(
        params,
        vec![Value::String("u-1".into()), Value::String("start".into())]
    );
    let rest = bind(methods::find("vm.power").unwrap(), params).unwrap();
    assert_eq!(rest.path, "/vms/u-1/power");
    assert_eq!(rest.body.unwrap()["action"], "start");
}

#[test]
fn declared_entities_are_refused_before_parsing() {
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<methodCall><methodName>&lol2;</methodName></methodCall>"#;
    let refused = parse_call(laughs.as_bytes()).err().unwrap();
    assert_eq!(refused.code, PARSE_ERROR);
    assert!(refused.message.contains("DOCTYPE"), "{}", refused.message);
    let external = r#"<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><methodCall><methodName>a</methodName></methodCall>"#;
    assert_eq!(code_of(parse_call(external.as_bytes())), PARSE_ERROR);
    // An entity used without a declaration is not expanded either.
    let undeclared = call_xml("host.get", "<param><value>&xxe;</value></param>");
    assert_eq!(code_of(parse_call(undeclared.as_bytes())), PARSE_ERROR);
    // The predefined ones and character references are text.
    let predefined = call_xml("host.get", "<param><value>a&amp;b&#x41;</value></param>");
    let (_, params) = parse_call(predefined.as_bytes()).unwrap();
    assert_eq!(params, vec![Value::String("a&bA".into())]);
}

#[test]
fn deep_nesting_huge_bodies_and_bad_bytes_are_refused() {
    let deep = call_xml(
        "vm.list",
        &format!(
            "<param>{}{}</param>",
            "<value><array><data>".repeat(20),
            "</data></array></value>".repeat(20)
        ),
    );
    let refused = parse_call(deep.as_bytes()).err().unwrap();
    assert!(refused.message.contains("deeper"), "{}", refused.message);
    let shallow = call_xml(
        "vm.list",
        "<param><value><array><data><value><array><data></data></array></value></data></array></value></param>",
    );
    assert!(parse_call(shallow.as_bytes()).is_ok());
    let huge = call_xml(
        "vm.list",
        &format!(
            "<param><value>{}</value></param>",
            "x".repeat(MAX_CALL_BYTES)
        ),
    );
    assert_eq!(code_of(parse_call(huge.as_bytes())), PARSE_ERROR);
    assert_eq!(code_of(parse_call(b"\xff\xfe<methodCall/>")), PARSE_ERROR);
    for broken in [
        "",
        "<methodCall>",
        "<methodCall><methodName>a</methodName><params><param></param></params></methodCall>",
        "<methodResponse><params/></methodResponse>",
        "<methodCall><methodName>a</methodName><params><param><value><i4>x</i4></value></param></params></methodCall>",
        "<methodCall><methodName>a</methodName></methodCall><extra/>",
    ] {
        assert_eq!(code_of(parse_call(broken.as_bytes())), PARSE_ERROR, "{broken}");
    }
}

#[test]
fn arguments_are_checked_by_number_and_type() {
    let get = methods::find("vm.get").unwrap();
    let refused = bind(get, vec![]).err().unwrap();
    assert_eq!(refused.code, INVALID_PARAMS);
    assert!(
        refused.message.contains("takes 1 arguments, not 0"),
        "{}",
        refused.message
    );
    let refused = bind(get, vec![Value::Boolean(true)]).err().unwrap();
    assert!(
        refused
            .message
            .contains("argument 1 (id) must be a string id, not a boolean"),
        "{}",
        refused.message
    );
    assert_eq!(bind(get, vec![Value::Integer(7)]).unwrap().path, "/vms/7");
    for escape in ["a/power", "..", "a?b", "a%2Fb", "", "a b", "a#b"] {
        assert!(
            bind(get, vec![Value::String(escape.into())]).is_err(),
            "{escape:?} reaches no other route"
        );
    }
    let list = methods::find("vm.list").unwrap();
    let filter = Value::Struct(
        [
            ("name".to_string(), Value::String("web".into())),
            ("per_page".to_string(), Value::Integer(5)),
        ]
        .into_iter()
        .collect(),
    );
    let rest = bind(list, vec![filter]).unwrap();
    assert_eq!(rest.query.len(), 2);
    let nested = Value::Struct(
        [("name".to_string(), Value::Array(vec![]))]
            .into_iter()
            .collect(),
    );
    assert!(bind(list, vec![nested]).is_err());
    let metrics = methods::find("metrics.get").unwrap();
    let args = |object: &str| {
        vec![
            Value::String(object.into()),
            Value::String("cpu".into()),
            Value::String("hour".into()),
        ]
    };
    assert_eq!(
        bind(metrics, args("host:h1")).unwrap().path,
        "/hosts/h1/metrics"
    );
    assert_eq!(
        bind(metrics, args("vm:u1")).unwrap().path,
        "/vms/u1/metrics"
    );
    for bad in ["h1", "disk:x", "vm:", "vm:a/b"] {
        assert!(bind(metrics, args(bad)).is_err(), "{bad}");
    }
    let backup = methods::find("vm.backup").unwrap();
    let options = Value::Struct(
        [("when".to_string(), Value::Base64(vec![1]))]
            .into_iter()
            .collect(),
    );
    assert!(bind(backup, vec![Value::String("u".into()), options]).is_err());
}

#[test]
fn rest_answers_become_xml_rpc_values() {
    let v = to_xmlrpc(serde_json::json!({
        "a": 1, "big": 5_000_000_000u64, "f": 1.5, "s": "x", "none": null,
        "list": [true, null]
    }));
    let Value::Struct(m) = v else {
        panic!("not a struct")
    };
    assert_eq!(m["a"], Value::Integer(1));
    assert_eq!(m["big"], Value::Long(5_000_000_000));
    assert_eq!(m["f"], Value::Double(1.5));
    assert!(!m.contains_key("none"), "no null member");
    assert_eq!(
        m["list"],
        Value::Array(vec![Value::Boolean(true), Value::Nil])
    );
}

#[test]
fn help_and_signatures_name_the_arguments_and_the_route() {
    let m = methods::find("metrics.get").unwrap();
    assert_eq!(
        m.full_help().split(" -> ").next().unwrap(),
        "metrics.get(object: string, metric: string, timeframe: string, [cf: string])"
    );
    assert!(m
        .full_help()
        .contains("Mirrors GET /api/v1/{object}/metrics"));
    assert_eq!(
        m.signatures(),
        vec![
            vec!["struct", "string", "string", "string"],
            vec!["struct", "string", "string", "string", "string"]
        ]
    );
}
