//! Kafka through rdkafka.
