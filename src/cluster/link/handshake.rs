//! The mutual HMAC-SHA256 handshake that authenticates a fresh TCP connection: Hello /
//! Challenge / Proof exchange for the acceptor and the dialer, the MAC computation and nonces.

use std::io;

use bytes::BytesMut;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::net::TcpStream;

use super::LinkMessage;
use super::config::valid_node_id;
use crate::cluster::frame::{
    Envelope, FrameError, MAC_LEN, NONCE_LEN, PROTOCOL_VERSION, read_frame, write_frame,
};

/// Largest frame accepted before a peer has authenticated.
const HANDSHAKE_FRAME_MAX: usize = 1024;

pub(super) const ACCEPT_LABEL: &[u8] = b"sb-accept";
pub(super) const DIAL_LABEL: &[u8] = b"sb-dial";

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("expected a {0} frame")]
    Unexpected(&'static str),
    #[error("peer identifies as {got:?}, expected {expected:?}")]
    WrongPeer { expected: String, got: String },
    #[error("invalid peer id {0:?}")]
    BadNodeId(String),
    #[error("peer {0:?} sorts above this node, so this node dials it, not the other way round")]
    WrongDirection(String),
    #[error("authentication failed (MAC mismatch: wrong cluster secret?)")]
    BadMac,
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

/// Acceptor side; returns the authenticated dialer's id.
pub(super) async fn accept_handshake<T: LinkMessage>(
    me: &str,
    secret: &[u8],
    stream: &mut TcpStream,
) -> Result<String, HandshakeError> {
    let mut read_buf = Vec::new();
    let mut write_buf = BytesMut::new();
    let (hello, _) = read_frame::<_, T>(stream, &mut read_buf, HANDSHAKE_FRAME_MAX).await?;
    let Envelope::Hello { version, node: dialer, nonce: dialer_nonce } = hello else {
        return Err(HandshakeError::Unexpected("Hello"));
    };
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version(version));
    }
    if !valid_node_id(&dialer) || dialer == me {
        return Err(HandshakeError::BadNodeId(dialer));
    }
    if dialer.as_str() > me {
        return Err(HandshakeError::WrongDirection(dialer));
    }
    let my_nonce = random_nonce()?;
    let mac = handshake_mac(secret, ACCEPT_LABEL, me, &dialer, &dialer_nonce, &my_nonce)?.finalize();
    let challenge = Envelope::<T>::Challenge {
        version: PROTOCOL_VERSION,
        node: me.to_string(),
        nonce: my_nonce,
        mac: mac.into_bytes().into(),
    };
    write_frame(stream, &challenge, &mut write_buf).await?;
    let (proof, _) = read_frame::<_, T>(stream, &mut read_buf, HANDSHAKE_FRAME_MAX).await?;
    let Envelope::Proof { mac } = proof else {
        return Err(HandshakeError::Unexpected("Proof"));
    };
    handshake_mac(secret, DIAL_LABEL, &dialer, me, &my_nonce, &dialer_nonce)?
        .verify_slice(&mac)
        .map_err(|_| HandshakeError::BadMac)?;
    Ok(dialer)
}

/// Dialer side; succeeds only if the acceptor proves the secret and is `expected`.
pub(super) async fn dial_handshake<T: LinkMessage>(
    me: &str,
    secret: &[u8],
    stream: &mut TcpStream,
    expected: &str,
) -> Result<(), HandshakeError> {
    let mut read_buf = Vec::new();
    let mut write_buf = BytesMut::new();
    let my_nonce = random_nonce()?;
    let hello = Envelope::<T>::Hello { version: PROTOCOL_VERSION, node: me.to_string(), nonce: my_nonce };
    write_frame(stream, &hello, &mut write_buf).await?;
    let (challenge, _) = read_frame::<_, T>(stream, &mut read_buf, HANDSHAKE_FRAME_MAX).await?;
    let Envelope::Challenge { version, node: acceptor, nonce: acceptor_nonce, mac } = challenge else {
        return Err(HandshakeError::Unexpected("Challenge"));
    };
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version(version));
    }
    if acceptor != expected {
        return Err(HandshakeError::WrongPeer { expected: expected.to_string(), got: acceptor });
    }
    handshake_mac(secret, ACCEPT_LABEL, &acceptor, me, &my_nonce, &acceptor_nonce)?
        .verify_slice(&mac)
        .map_err(|_| HandshakeError::BadMac)?;
    let proof = handshake_mac(secret, DIAL_LABEL, me, &acceptor, &acceptor_nonce, &my_nonce)?.finalize();
    write_frame(stream, &Envelope::<T>::Proof { mac: proof.into_bytes().into() }, &mut write_buf).await?;
    Ok(())
}

/// HMAC(secret, label | len16(first_id) first_id | len16(second_id) second_id | nonce1 | nonce2).
/// Ids are length-prefixed so that no two (first, second) pairs give the same input.
pub(super) fn handshake_mac(
    secret: &[u8],
    label: &[u8],
    first_id: &str,
    second_id: &str,
    first_nonce: &[u8; NONCE_LEN],
    second_nonce: &[u8; NONCE_LEN],
) -> Result<HmacSha256, HandshakeError> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| HandshakeError::BadMac)?;
    mac.update(label);
    for id in [first_id, second_id] {
        // Ids are at most MAX_NODE_ID_LEN (255) bytes, validated before this point.
        mac.update(&(id.len() as u16).to_be_bytes());
        mac.update(id.as_bytes());
    }
    mac.update(first_nonce);
    mac.update(second_nonce);
    Ok(mac)
}

fn random_nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|err| HandshakeError::Random(err.to_string()))?;
    Ok(nonce)
}

const _: () = assert!(MAC_LEN == 32, "HMAC-SHA256 tags are 32 bytes");
