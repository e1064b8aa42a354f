//! A typed, blocking client of the REST API, sharing the server's request and response types.

use std::io::Read;

use reqwest::blocking::{Body, Client as Http, RequestBuilder, Response};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::error::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}", render_problem(.0))]
    Api(Box<Problem>),
    #[error("the server answered {status} with a body that is not a problem report: {body}")]
    Unexpected { status: u16, body: String },
    #[error("reading the server's answer: {0}")]
    Decode(String),
}

fn render_problem(p: &Problem) -> String {
    let mut out = p.detail.clone();
    if let Some(field) = &p.field {
        out.push_str(&format!(" [field: {field}]"));
    }
    out.push_str(&format!(" ({} {})", p.status, p.kind));
    if let Some(errors) = &p.errors {
        for e in errors {
            out.push_str(&format!("\n  {e}"));
        }
        if let Some(total) = p.total_errors {
            if total as usize > errors.len() {
                out.push_str(&format!(
                    "\n  ... and {} more",
                    total as usize - errors.len()
                ));
            }
        }
    }
    out
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: Http,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = Http::builder()
            .timeout(None)
            .build()
            .unwrap_or_else(|_| Http::new());
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    pub fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let response = req.send().map_err(|source| ClientError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().unwrap_or_default();
        match serde_json::from_str::<Problem>(&body) {
            Ok(problem) => Err(ClientError::Api(Box::new(problem))),
            Err(_) => Err(ClientError::Unexpected { status, body }),
        }
    }

    fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
        response
            .json()
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::decode(self.send(self.request(Method::GET, path))?)
    }

    /// GET with query parameters taken from `query`'s fields.
    pub fn get_query<Q: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        Self::decode(self.send(self.request(Method::GET, path).query(query))?)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::decode(self.send(self.request(Method::POST, path).json(body))?)
    }

    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::decode(self.send(self.request(Method::PATCH, path).json(body))?)
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::decode(self.send(self.request(Method::PUT, path).json(body))?)
    }

    pub fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::decode(self.send(self.request(Method::POST, path))?)
    }

    /// Streams a body of known length.
    pub fn upload<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        body: impl Read + Send + 'static,
        length: u64,
    ) -> Result<T, ClientError> {
        Self::decode(self.send(req.body(Body::sized(body, length)))?)
    }
}
