//! Connection set-up and a small synchronous client.

use std::collections::VecDeque;

use crate::error::{IdmError, Result};
use crate::frame::Kind;
use crate::msg::{
    Call, Event, Hello, Message, PROTOCOL_MAX, PROTOCOL_MIN, Response, Welcome, negotiate,
};
use crate::transport::Transport;

/// Client side of the handshake; returns the negotiated version and the tenant label the server
/// derived from the transport.
pub fn client_handshake(t: &mut dyn Transport, client: &str) -> Result<(u16, String)> {
    let hello = Message::Hello(Hello {
        min_version: PROTOCOL_MIN,
        max_version: PROTOCOL_MAX,
        client: client.to_owned(),
    });
    t.send(&hello.to_frame(0))?;
    let f = t.recv()?;
    match Message::from_frame(&f)? {
        Message::Welcome(Welcome::Accepted {
            version, tenant, ..
        }) => {
            if !(PROTOCOL_MIN..=PROTOCOL_MAX).contains(&version) {
                return Err(IdmError::Handshake(format!(
                    "server chose version {version} outside {PROTOCOL_MIN}..={PROTOCOL_MAX}"
                )));
            }
            Ok((version, tenant))
        }
        Message::Welcome(Welcome::Refused { reason }) => Err(IdmError::Handshake(reason)),
        other => Err(IdmError::Unexpected(format!(
            "{:?} instead of welcome",
            other.kind()
        ))),
    }
}

/// Server side: reads the hello, answers with the chosen version or a refusal.
pub fn server_handshake(t: &mut dyn Transport, server: &str, supported: (u16, u16)) -> Result<u16> {
    let f = t.recv()?;
    let Message::Hello(h) = Message::from_frame(&f)? else {
        return Err(IdmError::Unexpected(format!("{:?} before hello", f.kind)));
    };
    let tenant = t.peer().label();
    match negotiate((h.min_version, h.max_version), supported) {
        Some(version) => {
            let w = Message::Welcome(Welcome::Accepted {
                version,
                server: server.to_owned(),
                tenant,
            });
            t.send(&w.to_frame(0))?;
            Ok(version)
        }
        None => {
            let reason = format!(
                "no common protocol version: client {}..={}, server {}..={}",
                h.min_version, h.max_version, supported.0, supported.1
            );
            let w = Message::Welcome(Welcome::Refused {
                reason: reason.clone(),
            });
            t.send(&w.to_frame(0))?;
            Err(IdmError::Handshake(reason))
        }
    }
}

/// A synchronous request/response client; events that arrive meanwhile are queued.
pub struct Client {
    pub transport: Box<dyn Transport>,
    next_id: u64,
    pub events: VecDeque<Event>,
    pub version: u16,
    pub tenant: String,
}

impl Client {
    /// Handshakes over `transport`.
    pub fn new(mut transport: Box<dyn Transport>, name: &str) -> Result<Self> {
        let (version, tenant) = client_handshake(transport.as_mut(), name)?;
        Ok(Self {
            transport,
            next_id: 1,
            events: VecDeque::new(),
            version,
            tenant,
        })
    }

    /// Wraps a transport whose handshake was done by hand (e.g. to offer a memfd area first).
    pub fn new_after_handshake(transport: Box<dyn Transport>) -> Self {
        Self {
            transport,
            next_id: 1,
            events: VecDeque::new(),
            version: PROTOCOL_MAX,
            tenant: String::new(),
        }
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Waits for the response with `id`, queueing events.
    pub fn wait(&mut self, id: u64) -> Result<Response> {
        loop {
            let f = self.transport.recv()?;
            match Message::from_frame(&f)? {
                Message::Response(r) if f.request_id == id => return Ok(r),
                // The answer to an earlier request abandoned after an error: drop it.
                Message::Response(_) if f.request_id < id => continue,
                Message::Event(e) => self.events.push_back(e),
                Message::Goodbye => return Err(IdmError::Closed),
                other => {
                    return Err(IdmError::Unexpected(format!(
                        "{:?} with id {} while waiting for {id}",
                        other.kind(),
                        f.request_id
                    )));
                }
            }
        }
    }

    /// Sends one call and waits for its response.
    pub fn call(&mut self, call: &Call) -> Result<Response> {
        let id = self.next_id();
        self.transport
            .send(&Message::Request(call.clone()).to_frame(id))?;
        self.wait(id)
    }

    /// Sends a call without waiting; pair with [`Client::wait`] (responses come in order).
    pub fn send(&mut self, call: Call) -> Result<u64> {
        let id = self.next_id();
        self.transport
            .send(&crate::frame::Frame::new(Kind::Request, id, call.encode()))?;
        Ok(id)
    }

    /// Sends a one-way call (request id 0): the server sends no response; an error is reported
    /// by the next synchronising call instead, as CUDA does for asynchronous launches.
    pub fn send_oneway(&mut self, call: Call) -> Result<()> {
        self.transport
            .send(&crate::frame::Frame::new(Kind::Request, 0, call.encode()))
    }

    /// Sends without cloning (large payloads).
    pub fn call_owned(&mut self, call: Call) -> Result<Response> {
        let id = self.next_id();
        self.transport
            .send(&crate::frame::Frame::new(Kind::Request, id, call.encode()))?;
        self.wait(id)
    }
}
