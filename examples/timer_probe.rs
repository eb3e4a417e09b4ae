use std::time::{Duration, Instant};
fn main() {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(1))
        .spin_before_park(Duration::from_micros(20))
        .make()
        .unwrap();
    ex.run(async {
        let t0 = Instant::now();
        let long = glommio::spawn_local(async move {
            let r = futures_lite::future::or(
                async {
                    futures::future::pending::<()>().await;
                    Some(())
                },
                async {
                    glommio::timer::sleep(Duration::from_secs(5)).await;
                    None
                },
            )
            .await;
            println!("long done {:?} at {:?}", r, t0.elapsed());
        });
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let mut last = Instant::now();
        for i in 0..100 {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let gap = last.elapsed();
            if gap > Duration::from_millis(100) {
                println!("tick {i} gap {gap:?} at {:?}", t0.elapsed());
            }
            last = Instant::now();
        }
        println!("ticks done at {:?}", t0.elapsed());
        long.await;
    });
}
