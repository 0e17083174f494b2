"""Weight conversion: official and ImageNet weights into our networks."""
