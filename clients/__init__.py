"""Client side: the ClientApp and the tasks it runs."""
