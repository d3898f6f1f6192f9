//! Building a mica dataset from CMU-MultimodalSDK computational sequences (`mica import-csd`).
