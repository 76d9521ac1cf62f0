"""`mmsearch demo`: a synthetic photo collection with ground truth (shapes), a small SigLIP trained on it
(train, shipped in model/), and the end-to-end run (run): index -> gRPC server -> queries -> recall@10."""
