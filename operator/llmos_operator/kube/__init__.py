"""The generic controller runtime, knowing no llmos kind: the API client, Events, informers and their store, the
work queue, leader election and the health the probes report."""
