//! MQTT through rumqttc.
