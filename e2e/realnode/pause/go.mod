module mock-accel.example.com/e2e/realnode/pause

go 1.26.0
