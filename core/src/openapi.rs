//! The refusals every operation of both APIs can answer with besides its own
//! responses, added to the generated documents so that they say exactly what
//! the servers do. They come from the shared extractors and layers (the token,
//! the body, the query, the path, the Idempotency-Key, the database being
//! away), so they are written down once here instead of at every handler.

use utoipa::PartialSchema;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ArrayItems, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Required, Response, ResponseBuilder, Schema,
};

use crate::api::ErrorBody;

/// The `bearer` security scheme both APIs are called with.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What an API adds to the refusals every API shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refusals {
    /// Every authenticated operation can answer `429` (the storefront's rates).
    pub rate_limited: bool,
}

/// The longest Idempotency-Key, and what it may hold: visible ASCII.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;
const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]+$";

/// The description of a request body that may be left out (read with
/// `OptionalJson`): `request_body(content = T, description = "Optional")`.
pub const OPTIONAL_BODY: &str = "Optional";

impl Refusals {
    /// Adds to every operation of `openapi` the refusals it can answer with,
    /// where the handler's own documentation does not already say them.
    pub fn document(self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.schemas.entry("ErrorBody".into()).or_insert_with(ErrorBody::schema);
        for schema in components.schemas.values_mut() {
            forbid_nul(schema);
        }
        let secured_by_default = openapi.security.as_ref().is_some_and(|s| !s.is_empty());
        for operation in operations(openapi) {
            self.add(operation, secured_by_default);
            for parameter in operation.parameters.iter_mut().flatten() {
                if let RefOr::T(parameter) = parameter
                    && let Some(schema) = &mut parameter.schema
                {
                    forbid_nul(schema);
                }
            }
            if let Some(RefOr::T(body)) = &mut operation.request_body {
                // Documented as optional (an `OptionalJson` extractor): a request may leave it out.
                if body.description.as_deref() == Some(OPTIONAL_BODY) {
                    body.required = Some(Required::False);
                }
                for content in body.content.values_mut() {
                    if let RefOr::T(content) = content
                        && let Some(schema) = &mut content.schema
                    {
                        forbid_nul(schema);
                    }
                }
            }
        }
    }

    fn add(self, operation: &mut Operation, secured_by_default: bool) {
        let authenticated = match &operation.security {
            None => secured_by_default,
            // `security: [{}]` makes the token optional; `[]` turns it off.
            Some(requirements) => {
                !requirements.is_empty()
                    && requirements.iter().all(|r| serde_json::to_value(r).is_ok_and(|v| v != serde_json::json!({})))
            }
        };
        let has = |place: ParameterIn| {
            operation.parameters.iter().flatten().any(|p| match p {
                RefOr::T(p) => p.parameter_in == place,
                RefOr::Ref(_) => false,
            })
        };
        let (in_path, in_query) = (has(ParameterIn::Path), has(ParameterIn::Query));
        let idempotent = constrain_idempotency_key(operation);
        let body = operation.request_body.is_some();
        let mut refusals: Vec<(u16, &str)> = Vec::new();
        if body || in_query || in_path || idempotent {
            refusals.push((400, "The request is malformed: its body, query, path or Idempotency-Key"));
        }
        if authenticated {
            refusals.push((401, "No token, or one that is unknown, revoked or expired"));
            refusals.push((403, "The token's role may not do this"));
        }
        if in_path {
            refusals.push((404, "Not found"));
        }
        if idempotent {
            refusals.push((409, "The Idempotency-Key was used for a different request, or the change conflicts"));
        }
        if body {
            refusals.push((413, "The body is larger than the API accepts"));
            refusals.push((415, "The body is not `application/json`"));
            refusals.push((422, "The body is JSON but a field is invalid"));
        }
        if authenticated && self.rate_limited {
            refusals.push((429, "Over the plan's request rate; retry after `Retry-After` seconds"));
        }
        refusals.push((503, "A dependency is briefly unavailable; retry after `Retry-After` seconds"));
        for (status, description) in refusals {
            operation.responses.responses.entry(status.to_string()).or_insert_with(|| refusal(status, description));
        }
    }
}

/// No text either API takes may hold the NUL character (U+0000): PostgreSQL
/// cannot store it, and the extractors refuse it at the edge. Every string
/// schema without a pattern, format or enum of its own gets one saying so.
pub const NUL_FREE: &str = "^[^\\x00]*$";

fn forbid_nul(schema: &mut RefOr<Schema>) {
    let RefOr::T(schema) = schema else { return };
    match schema {
        Schema::Object(object) => {
            let string = match &object.schema_type {
                SchemaType::Type(Type::String) => true,
                SchemaType::Array(types) => types.contains(&Type::String),
                _ => false,
            };
            if string && object.pattern.is_none() && object.format.is_none() && object.enum_values.is_none() {
                object.pattern = Some(NUL_FREE.to_owned());
            }
            object.properties.values_mut().for_each(forbid_nul);
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                forbid_nul(items);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(forbid_nul),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(forbid_nul),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(forbid_nul),
        _ => {}
    }
}

fn refusal(status: u16, description: &str) -> RefOr<Response> {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build());
    if matches!(status, 429 | 503) {
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).build();
        response = response.header("Retry-After", HeaderBuilder::new().schema(Some(seconds)).build());
    }
    RefOr::T(response.build())
}

/// Gives an operation's `Idempotency-Key` header the constraints the servers
/// enforce; whether it has one.
fn constrain_idempotency_key(operation: &mut Operation) -> bool {
    let mut found = false;
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter
            && parameter.parameter_in == ParameterIn::Header
            && parameter.name.eq_ignore_ascii_case("idempotency-key")
        {
            parameter.required = Required::True;
            parameter.schema = Some(RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(IDEMPOTENCY_KEY_MAX))
                    .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
                    .build(),
            )));
            found = true;
        }
    }
    found
}

/// Makes the property of component `schema` a string that takes one of
/// `values`, where the values are known only at start (the plans of
/// `plans.toml`, the database's time zones) or are fewer than its type's (the
/// roles a person may have). Does nothing where there is no such property.
pub fn enumerate_property(openapi: &mut OpenApi, schema: &str, property: &str, values: &[impl AsRef<str>]) {
    let Some(components) = openapi.components.as_mut() else { return };
    if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
        && let Some(field) = object.properties.get_mut(property)
    {
        *field = one_of(values);
    }
}

/// Makes the parameter `name` in `place` a string that takes one of
/// `values`, on every operation that has it.
pub fn enumerate_parameter(openapi: &mut OpenApi, place: ParameterIn, name: &str, values: &[impl AsRef<str>]) {
    for operation in operations(openapi) {
        for parameter in operation.parameters.iter_mut().flatten() {
            if let RefOr::T(parameter) = parameter
                && parameter.parameter_in == place
                && parameter.name == name
            {
                parameter.schema = Some(one_of(values));
            }
        }
    }
}

fn one_of(values: &[impl AsRef<str>]) -> RefOr<Schema> {
    let values = values.iter().map(|v| serde_json::Value::from(v.as_ref()));
    RefOr::T(Schema::Object(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values)).build()))
}

/// Every operation of the document.
fn operations(openapi: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
    })
}
