module example.invalid/spacer/clients/go

go 1.19
