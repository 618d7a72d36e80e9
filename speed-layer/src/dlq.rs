//! The dead-letter producer: rejected messages go to `ad-dlq` with their reason in
//! headers and their bytes unchanged (format: `platform::kafka`).
//!
//! Sends are asynchronous; [`DeadLetters::drain`] awaits every delivery, and the
//! partition task calls it before a flush stores offsets past the rejected messages,
//! so a rejected message is either in the DLQ or will be consumed again.

use common::decode::Rejection;
use common::telemetry::EVENTS_DEAD_LETTERED;
use platform::kafka::{DlqSource, dlq_headers};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// Deliveries in flight for one partition task.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    stage: &'static str,
    in_flight: Vec<DeliveryFuture>,
}

/// A dead-letter delivery failed.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter delivery to {topic} failed: {source}")]
pub struct DlqError {
    /// The DLQ topic.
    pub topic: String,
    /// Cause.
    #[source]
    pub source: rdkafka::error::KafkaError,
}

impl DeadLetters {
    /// Sends to `topic` through `producer`; `stage` names the rejecting component.
    pub fn new(producer: FutureProducer, topic: &str, stage: &'static str) -> Self {
        DeadLetters {
            producer,
            topic: topic.to_owned(),
            stage,
            in_flight: Vec::new(),
        }
    }

    /// Queues one rejected message.
    ///
    /// # Errors
    ///
    /// When the producer's queue is full even after waiting for deliveries.
    pub async fn send(
        &mut self,
        key: Option<&[u8]>,
        payload: &[u8],
        rejection: &Rejection,
        src: &DlqSource<'_>,
        now_ms: i64,
    ) -> Result<(), DlqError> {
        metrics::counter!(EVENTS_DEAD_LETTERED, "topic" => src.topic.to_owned(), "reason" => rejection.reason.as_str())
            .increment(1);
        tracing::debug!(reason = rejection.reason.as_str(), detail = %rejection.detail, topic = src.topic,
            partition = src.partition, offset = src.offset, "dead-lettering message");
        let src = DlqSource {
            stage: self.stage,
            ..src.clone()
        };
        loop {
            let mut record = FutureRecord::to(&self.topic)
                .payload(payload)
                .headers(dlq_headers(rejection, &src, now_ms));
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.in_flight.push(f);
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // Backpressure: wait for what is queued, then try again.
                    self.drain().await?;
                }
                Err((e, _)) => {
                    return Err(DlqError {
                        topic: self.topic.clone(),
                        source: e,
                    });
                }
            }
        }
    }

    /// Waits until every queued dead letter is acknowledged by the broker.
    ///
    /// # Errors
    ///
    /// The first failed delivery (the caller must not store offsets past it).
    pub async fn drain(&mut self) -> Result<(), DlqError> {
        for f in self.in_flight.drain(..) {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(DlqError {
                        topic: self.topic.clone(),
                        source: e,
                    });
                }
                Err(_cancelled) => {
                    return Err(DlqError {
                        topic: self.topic.clone(),
                        source: rdkafka::error::KafkaError::Canceled,
                    });
                }
            }
        }
        Ok(())
    }
}
