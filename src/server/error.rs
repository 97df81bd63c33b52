//! The API's error responses. Each variant fixes its HTTP status and its JSON body, and a
//! rejection also its `task_rejection_total` reason.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::metrics::RejectionReason;

/// An error response sent to an API client.
#[derive(Debug)]
pub enum ApiError {
    /// A request that failed authentication or a limit; counted in the metrics.
    Rejected(RejectionReason, String),
    TaskNotFound,
    NotFound,
    MethodNotAllowed,
    BadRequest(String),
    /// The client stopped sending the request body.
    BodyTimeout,
    /// The daemon is stopping and starts no new run.
    ShuttingDown,
    /// A fault of rtask itself; the detail is logged where it happens, not sent.
    Internal,
}

impl ApiError {
    pub fn rejected(reason: RejectionReason) -> ApiError {
        let message = match reason {
            RejectionReason::MissingKey => "missing Authorization header with a Bearer API key",
            RejectionReason::InvalidHeader => "the Authorization header is not \"Bearer <key>\"",
            RejectionReason::InvalidKeyEncoding => "the API key is not a valid rtask key",
            // One message for both. The key id is not secret, and the response time still
            // shows whether an argon2 verification ran, so this only keeps the message
            // free of detail.
            RejectionReason::KeyNotAllowed | RejectionReason::InvalidKey => {
                "invalid API key, or the key is not allowed for this task"
            }
            RejectionReason::LimitExceeded => "rate limit exceeded, try again later",
            RejectionReason::MaxConcurrent => {
                "too many runs of this task at once (maxConcurrentTasks), try again later"
            }
            RejectionReason::InputTooLarge => "request body is larger than maxInputBytes",
            RejectionReason::VerificationBusy => {
                "too many API keys waiting for verification, try again later"
            }
        };
        ApiError::Rejected(reason, message.to_owned())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Rejected(reason, _) => match reason {
                RejectionReason::MissingKey
                | RejectionReason::InvalidHeader
                | RejectionReason::InvalidKeyEncoding
                | RejectionReason::KeyNotAllowed
                | RejectionReason::InvalidKey => StatusCode::UNAUTHORIZED,
                RejectionReason::LimitExceeded | RejectionReason::MaxConcurrent => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                RejectionReason::InputTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                RejectionReason::VerificationBusy => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::TaskNotFound | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> &str {
        match self {
            ApiError::Rejected(_, message) | ApiError::BadRequest(message) => message,
            ApiError::TaskNotFound => "task not found",
            ApiError::NotFound => "not found",
            ApiError::MethodNotAllowed => "method not allowed",
            ApiError::BodyTimeout => "timed out reading the request body",
            ApiError::ShuttingDown => "rtask is shutting down, try again later",
            ApiError::Internal => "internal error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message() }));
        (self.status(), body).into_response()
    }
}
