"""ADR-0001 DynSIHA: attention whose Q, K, V and O come from SparseProtoLinear units."""
