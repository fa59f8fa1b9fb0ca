"""Online serving over the deployed versions (DESIGN section 7): business rules so far; the engine, the
environments and the HTTP API follow (issue [3 of 3])."""
