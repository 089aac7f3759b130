"""FedOps control dashboard (Streamlit): talks to the control service over gRPC and reads
telemetry from Elasticsearch and Prometheus. It holds no state of its own."""
