//! `GET /api/openapi.json`: an OpenAPI 3.1 document built from [`super::ROUTES`], the same
//! table the router is built from.

use axum::Json;
use serde_json::{Map, Value, json};

/// Path parameters and what they hold.
fn parameter(name: &str) -> Value {
    let description = match name {
        "env" => "an environment (or slot) name, like staging or staging-1",
        "id" => "a deployment id",
        "sha" => "a full 40-hex commit sha",
        _ => "",
    };
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string"}})
}

/// The document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for (method, path, tag, summary) in super::ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(parameter)
            .collect();
        let mutation = *method != "get";
        let hook = path.starts_with("/hooks/");
        let mut op = json!({
            "operationId": format!("{method}{}", path.replace(['/', '{', '}', '.', '-'], "_")),
            "tags": [tag],
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "default": {"description": "an error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if mutation {
            op["requestBody"] = json!({"required": false, "content": {
                "application/json": {"schema": {"type": "object"}}}});
            if !hook {
                op["security"] = json!([{"bearer": []}]);
            }
        }
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        item[*method] = op;
    }
    paths.insert(
        "/api/apps".into(),
        json!({"get": {
            "operationId": "get_api_apps",
            "tags": ["ferry"],
            "summary": "the apps this serve hosts that the token works for, with their environments",
            "parameters": [],
            "responses": {"200": {"description": "OK"}},
        }}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ferry",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Release promotion and deployment. Mutations need Authorization: \
                Bearer <token> (ferry token create); reads are open when ferry listens on \
                loopback only. Errors are {\"error\": {\"code\", \"message\"}}. \
                When ferry serves several apps, every /api/… route is also \
                /api/apps/{app}/… (and /hooks/… is /hooks/apps/{app}/…), which addresses \
                one app; un-prefixed routes reach the only app, and with several apps \
                answer 400 app_required.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
            }},
        },
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
