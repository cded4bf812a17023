//! `GET /api/v1/openapi.json`: the REST API as an OpenAPI 3.1 document,
//! generated from the route table ([`super::routes::ROUTES`]) so it cannot
//! list a route that is not served, nor miss one: each entry's method,
//! path, privilege, handler and media types become one operation.

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use super::routes::{Call, Reply, Route, ROUTES};
use crate::http::routing::Guard;

pub async fn document(_: Call<'_>) -> Reply {
    Ok(crate::http::json(StatusCode::OK, &openapi()))
}

/// The `{name}` placeholders of a path pattern.
fn placeholders(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn operation(route: &Route) -> Value {
    let (module, handler) = route.name.rsplit_once("::").unwrap_or(("api", route.name));
    let module = module.rsplit("::").next().unwrap_or(module);
    let parameters: Vec<Value> = placeholders(route.path)
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect();
    let content: Map<String, Value> = route
        .produces
        .iter()
        .map(|t| (t.to_string(), json!({"schema": {}})))
        .collect();
    let mut responses = json!({
        "2XX": {"description": "Done: 200, 201 (created) or 202 (a job accepted)", "content": content},
        "400": error_response("A malformed request or a refused value; the message names the field"),
        "404": error_response("No such object, or one the caller may not see"),
    });
    let mut op = json!({
        "operationId": format!("{}_{module}_{handler}", route.method.to_ascii_lowercase()),
        "tags": [module],
        "summary": format!("{} {}", route.method, route.path),
        "parameters": parameters,
    });
    match route.guard {
        Guard::Public => op["security"] = json!([]),
        Guard::Anyone => {
            responses["401"] = error_response("No or wrong credentials");
        }
        Guard::Requires(p) => {
            op["x-lifeboat-privilege"] = json!(p.as_str());
            op["description"] = json!(format!("Needs the `{}` privilege.", p.as_str()));
            responses["401"] = error_response("No or wrong credentials");
            responses["403"] = error_response("The caller's role lacks the privilege");
        }
    }
    if matches!(route.method, "POST" | "PUT" | "PATCH") {
        op["requestBody"] = json!({
            "required": false,
            "description": "JSON; send Content-Type: application/json also with an empty body",
            "content": {"application/json": {"schema": {"type": "object"}}}
        });
        responses["415"] = error_response("The body is not sent as application/json");
    }
    op["responses"] = responses;
    op
}

pub fn openapi() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        item[route.method.to_ascii_lowercase()] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Lifeboat REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Backup and failover of virtual machines. Generated from the \
                controller's route table; docs/api.md describes the fields.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"basic": []}, {"bearer": []}],
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer",
                    "description": "A session token (POST /session) or an API token (POST /tokens)"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            },
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::ExportFormat;

    #[test]
    fn every_route_is_one_operation_with_its_parameters_and_privilege() {
        let doc = openapi();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let route = ROUTES
                    .iter()
                    .find(|r| r.path == path && r.method.eq_ignore_ascii_case(method))
                    .unwrap_or_else(|| panic!("{method} {path} is served"));
                let names: Vec<&str> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(names, placeholders(path).collect::<Vec<_>>());
                assert_eq!(
                    op["x-lifeboat-privilege"].as_str(),
                    route.guard.privilege().map(|p| p.as_str())
                );
            }
        }
        assert_eq!(operations, ROUTES.len());
        let ids: std::collections::HashSet<String> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|i| i.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), ROUTES.len(), "operation ids are unique");
    }

    #[test]
    fn the_export_route_lists_every_format_it_answers() {
        let export = ROUTES
            .iter()
            .find(|r| r.path == "/exports/{table}")
            .unwrap();
        for f in ExportFormat::ALL {
            let essence = f.content_type().split(';').next().unwrap();
            assert!(export.produces.contains(&essence), "{essence}");
        }
    }
}
