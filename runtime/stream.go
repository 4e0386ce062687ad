package runtime

// StreamAs finds an optional interface T on s or on the streams it wraps (a
// wrapper exposes its inner stream with an Unwrap() Stream method, as Limit's
// streams do). The OpenAI handler uses it to find the hooks a gateway's
// streams implement, such as Header() http.Header and CostNanoTON() uint64.
func StreamAs[T any](s Stream) (T, bool) {
	for s != nil {
		if t, ok := s.(T); ok {
			return t, true
		}
		u, ok := s.(interface{ Unwrap() Stream })
		if !ok {
			break
		}
		s = u.Unwrap()
	}
	var zero T
	return zero, false
}
