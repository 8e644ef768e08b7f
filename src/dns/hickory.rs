//! hickory-server integration: our [`Handler`] as a `hickory_server::server::RequestHandler`.
//!
//! geosteer's own transports call [`Handler::handle`] directly (see `server.rs` for why). This
//! adapter lets the same handler run inside a `hickory_server::Server` — for embedding geosteer
//! in another hickory-based process, and as a cross-check in tests that both paths give the
//! same answer. hickory's `ResponseHandler` takes a structured `MessageResponse`, so the
//! adapter decodes our encoded answer once more; that costs a decode per query, which is why
//! it is not the path the binary serves from.

use std::sync::Arc;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, Message, MessageType, Metadata, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::debug;

use super::handler::{Handler, Transport};

/// Wraps a [`Handler`] for `hickory_server::Server`.
#[derive(Clone)]
pub struct HickoryHandler(pub Arc<Handler>);

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: Default::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for HickoryHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        };
        let mut out = Vec::new();
        if !self
            .0
            .handle(request.as_slice(), request.src(), transport, &mut out)
        {
            return failed(request, ResponseCode::NoError);
        }
        let msg = match Message::from_vec(&out) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "re-decoding our own answer failed");
                return failed(request, ResponseCode::ServFail);
            }
        };
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = msg.edns.as_ref() {
            builder.edns(edns);
        }
        let response = builder.build(
            msg.metadata,
            msg.answers.iter(),
            msg.authorities.iter(),
            std::iter::empty(),
            msg.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "sending response failed");
                failed(request, ResponseCode::ServFail)
            }
        }
    }
}
