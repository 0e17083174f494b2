"""The networks: PSPNet features, the Segment Net, the Context Net, CiSS-Net, loading."""
