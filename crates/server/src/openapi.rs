//! The parts of the OpenAPI document that no route gives: its title, the API key
//! security schemes, the 429 every route may answer, and the shapes of parameters
//! (utoipa collects the views of bodies and answers by itself). Every schema in the
//! document is a type the server really reads or writes: the views of
//! [`crate::views`].

use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};

use crate::views::shapes::{
    AccountId, AccountIdList, AppSlugList, AppSlugShape, Cursor, EntityIdList, EntityIdShape,
    EventTypeList, IntegrationIdList, IntegrationIdShape, LabelList, LabelShape, OffsetCursor,
    PageLimit, ScopesShape, StatusList, Token, V3StatusList, WaitSeconds,
};
use crate::views::v1::{DeliveryStateName, ErrorBody};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "keyhaven",
        description = "A connection broker: connect your users' accounts on other services and keep their credentials fresh. The connection routes speak Composio's APIs: v1 under /api/v1, the v2 calls of its JS SDK 0.5 under /api/v2, and v3.1 under /api/v3.1 (also served at /api/v3, not listed again here).",
    ),
    // The shapes of parameters are named here: utoipa collects those of bodies and
    // answers by itself, not those of parameters.
    components(schemas(
        ErrorBody,
        AccountId,
        IntegrationIdShape,
        AppSlugShape,
        EntityIdShape,
        LabelShape,
        EntityIdList,
        AppSlugList,
        IntegrationIdList,
        StatusList,
        V3StatusList,
        AccountIdList,
        LabelList,
        EventTypeList,
        Cursor,
        OffsetCursor,
        ScopesShape,
        PageLimit,
        WaitSeconds,
        Token,
        DeliveryStateName,
    )),
    tags(
        (name = "apps", description = "The app catalogue"),
        (name = "integrations", description = "An app's configuration for one service"),
        (name = "connectedAccounts", description = "One entity linked to one integration"),
        (name = "credentials", description = "Reading credentials: the credentials key only, every read audited"),
        (name = "events", description = "Status changes as server-sent events"),
        (name = "webhooks", description = "The webhooks and their deliveries (the outbox)"),
        (name = "pages", description = "What end users see: the OAuth callback and the connect form"),
        (name = "server", description = "The server itself"),
        (name = "v3.1", description = "Composio's v3.1 API, as its current SDKs call it: toolkits (the catalogue), auth configs (integrations), connected accounts and connection links; also at /api/v3"),
    )
)]
struct Base;

/// The whole document: the frame, the routes' parts, the two API keys as security
/// schemes.
pub(crate) fn document(parts: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut doc = Base::openapi();
    for part in parts {
        doc.merge(part);
    }
    secure(&mut doc);
    rate_limited(&mut doc);
    doc
}

/// Every route may answer 429: the open routes and requests with a missing or wrong
/// key are rate-limited per client address (`--rate-limit`). The pages (tag `pages`)
/// answer it with a page for a person, the API with an [`ErrorBody`].
fn rate_limited(doc: &mut OpenApi) {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
    let description = "Too many requests from this address on an open route or with a missing or wrong key; wait for the seconds in `Retry-After`";
    let json = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build();
    let page = ResponseBuilder::new()
        .description(description)
        .content(
            "text/html",
            ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let is_page = operation
                .tags
                .as_ref()
                .is_some_and(|tags| tags.iter().any(|t| t == "pages"));
            let response = if is_page { &page } else { &json };
            operation
                .responses
                .responses
                .entry("429".to_owned())
                .or_insert_with(|| RefOr::T(response.clone()));
        }
    }
}

/// Adds the two API keys as security schemes.
fn secure(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "The admin key, shown once when the server first started",
        ))),
    );
    components.add_security_scheme(
        "credentials_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "The credentials key: reads credentials, nothing else",
        ))),
    );
}

#[cfg(test)]
mod tests {
    /// Every `$ref` of the document names a schema it has.
    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(crate::openapi()).unwrap_or_default();
        let schemas = doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let text = doc.to_string();
        let mut missing: Vec<&str> = text
            .split("\"#/components/schemas/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| !schemas.contains_key(*name))
            .collect();
        missing.dedup();
        assert!(missing.is_empty(), "unresolved: {missing:?}");
    }
}
