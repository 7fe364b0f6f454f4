"""Reference models: the balloon device and driver of each profile, sans-IO."""
