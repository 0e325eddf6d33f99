//! Errors as JSON, `{"error": {"code", "message", "status"}, "message"}`, with the
//! status of their kind: the one place where keyhaven's error kinds become HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyhaven::{Error, ErrorKind};

/// An error of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    /// An error with a status, a machine code and words for a person.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// 400 `invalid_input`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 401: the admin key is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "give the admin API key in the x-api-key header",
        )
    }

    /// 401 on the credentials route: the credentials key is missing or wrong.
    pub fn unauthorized_credentials() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "give the credentials key (KEYHAVEN_CREDENTIALS_KEY, shown once when the server first started; not the admin key) in the x-api-key header",
        )
    }
}

/// The HTTP status of an error of `kind`: the one place the server maps the
/// library's error kinds (the pages refine it for links only; see `pages.rs`).
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        let status = status_of(kind);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        Self::new(status, &kind.to_string(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = crate::views::v1::ErrorBody {
            message: self.message.clone(),
            error: crate::views::v1::ErrorDetail {
                code: self.code,
                message: self.message,
                status: self.status.as_u16(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        // Composio's SDKs retry 409s (and other errors) unless told not to: a refusal
        // for the request itself answers the same however often it is sent.
        if self.status.is_client_error()
            && self.status != StatusCode::REQUEST_TIMEOUT
            && self.status != StatusCode::TOO_MANY_REQUESTS
        {
            response.headers_mut().insert(
                axum::http::HeaderName::from_static("x-should-retry"),
                axum::http::HeaderValue::from_static("false"),
            );
        }
        response
    }
}
